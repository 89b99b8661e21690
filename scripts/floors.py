"""Print pip constraints that pin every direct dependency of posttrain at the lowest version pyproject.toml admits.

    python scripts/floors.py [--extras dev,serve,eval] > floors.txt
    pip install -e ".[dev,serve,eval]" -c floors.txt

`make test-min` installs posttrain this way and runs the tests, so a floor that stops working fails CI.
torch is the one exception: the only CPU build of PyTorch a CPU-only machine can install without PyPI's
multi-GB CUDA wheels is the one scripts/setup.sh installs, so torch's floor is stated, not exercised here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from packaging.requirements import Requirement

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
NOT_PINNED = {"torch"}  # see the module docstring


def floor(requirement: Requirement) -> str | None:
    """The lowest version a requirement admits: its `>=` or `==` bound, if it has one."""
    for spec in requirement.specifier:
        if spec.operator in (">=", "==", "~="):
            return spec.version
    return None


def floor_constraints(extras: list[str]) -> list[str]:
    """`name==floor` lines for the direct dependencies (and the named extras) that have a lower bound."""
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    declared = list(project["dependencies"])
    for extra in extras:
        declared += project["optional-dependencies"][extra]
    pins = {}
    for line in declared:
        requirement = Requirement(line)
        version = floor(requirement)
        if requirement.name in NOT_PINNED or version is None:
            continue
        pins[requirement.name] = version  # an extra repeating a package names the same floor
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--extras", default="", help="comma-separated extras whose floors to pin too")
    args = parser.parse_args(argv)
    extras = [name for name in args.extras.split(",") if name]
    print("\n".join(floor_constraints(extras)))


if __name__ == "__main__":
    main(sys.argv[1:])
