"""The version gate of benchmarks/gpu_check.py: before anything loads, every direct dependency in pyproject.toml must
be installed at a version its specifier admits, and so must what those packages themselves require.

The floors are read from pyproject.toml when the check starts, so they follow its edits. A package below its floor
(or missing, or above a ceiling) is installed from the carried wheel folder with `pip install --upgrade --no-deps
--no-index` (the GPU machine has no network); since --no-deps resolves nothing, each installed or direct package's own
Requires-Dist is checked the same way, in rounds, until nothing is unmet. What no carried wheel satisfies stops the
check at once, naming the package, the version found and the versions needed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import InvalidVersion, Version

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROUNDS = 5  # a wheel's requirement can name another carried wheel; more rounds than this is a loop


class GateError(Exception):
    """Unmet requirements no carried wheel satisfies: the check must not start."""


@dataclass(frozen=True)
class Unmet:
    requirement: Requirement
    found: str | None
    wanted_by: str  # "pyproject.toml", or the distribution (with its version) that requires it

    def line(self) -> str:
        found = f"found {self.found}" if self.found else "not installed"
        needed = spelled(self.requirement) or "any version"
        return f"{self.requirement.name}: {found}, needed {needed} (by {self.wanted_by})"


def spelled(requirement: Requirement) -> str:
    """Its version bounds, lower bound first (>=5.0,<6)."""
    return ",".join(sorted((str(s) for s in requirement.specifier), key=lambda s: not s.startswith(">")))


def declared(pyproject: Path) -> list[Requirement]:
    """The direct dependencies of the project, as pyproject.toml states them now."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    return [Requirement(line) for line in project["dependencies"]]


def installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def satisfied(requirement: Requirement, version: str | None) -> bool:
    if version is None:
        return False
    try:
        return requirement.specifier.contains(Version(version), prereleases=True)
    except InvalidVersion:
        return False


def own_requirements(name: str) -> list[Requirement]:
    """What an installed distribution requires on this machine (markers evaluated), with the extras a requirement on it
    may ask for left to the requirer."""
    found = []
    for line in importlib.metadata.requires(name) or []:
        requirement = Requirement(line)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            found.append(requirement)
    return found


def extra_requirements(requirement: Requirement) -> list[Requirement]:
    """What the extras of `requirement` (fsspec[http]) add to the named distribution's own requirements."""
    found = []
    for extra in requirement.extras:
        for line in importlib.metadata.requires(requirement.name) or []:
            needed = Requirement(line)
            marker = needed.marker
            if marker is not None and marker.evaluate({"extra": extra}) and not marker.evaluate({"extra": ""}):
                found.append(needed)
    return found


def unmet(direct: list[Requirement], also_checked: set[str]) -> list[Unmet]:
    """Every unmet requirement: the direct ones, then the Requires-Dist of each installed direct dependency and of
    each distribution in `also_checked` (those installed from wheels, whose dependencies pip did not resolve)."""
    problems: dict[str, Unmet] = {}
    pending = [(requirement, "pyproject.toml") for requirement in direct]
    owners = {canonicalize_name(r.name) for r in direct} | also_checked
    for owner in sorted(owners):
        version = installed(owner)
        if version is not None:
            who = f"{owner} {version}"
            pending += [(requirement, who) for requirement in own_requirements(owner)]
    while pending:
        requirement, who = pending.pop(0)
        version = installed(requirement.name)
        key = canonicalize_name(requirement.name)
        if not satisfied(requirement, version):
            problems.setdefault(key, Unmet(requirement, version, who))
        elif requirement.extras:
            pending += [(needed, f"{requirement}") for needed in extra_requirements(requirement)]
    return list(problems.values())


def wheels_in(folder: Path | None) -> dict[str, list[tuple[Version, Path]]]:
    """The carried wheels by distribution, newest first."""
    found: dict[str, list[tuple[Version, Path]]] = {}
    for path in sorted(folder.glob("*.whl")) if folder else []:
        name, version, _, _ = parse_wheel_filename(path.name)
        found.setdefault(name, []).append((version, path))
    return {name: sorted(versions, reverse=True) for name, versions in found.items()}


def pip_install(wheels: list[Path], target: Path | None = None) -> None:
    """Install exactly these wheels over whatever version is there (no index: the GPU machine has no network): into
    this Python's environment, or into `target`, which then comes first on sys.path (an environment not writable)."""
    command = [sys.executable, "-m", "pip", "install", "-q", "--upgrade", "--no-deps", "--no-index", "--no-cache-dir"]
    if target is not None:
        command += ["--target", str(target)]
        if str(target) not in sys.path:
            sys.path.insert(0, str(target))
    done = subprocess.run(command + [str(w) for w in wheels], capture_output=True, text=True)
    if done.returncode != 0:
        raise GateError(f"pip could not install {[w.name for w in wheels]}:\n{(done.stdout + done.stderr)[-2000:]}")


def gate(pyproject: Path, wheels: Path | None, install: Callable[[list[Path]], None] = pip_install) -> dict:
    """Meet every requirement from the carried wheels, or raise GateError naming what is unmet. Returns what the
    report records: each direct dependency's needed and installed version, and the wheels installed."""
    direct = declared(pyproject)
    carried = wheels_in(wheels)
    from_wheels: list[str] = []
    for _ in range(ROUNDS):
        problems = unmet(direct, {parse_wheel_filename(name)[0] for name in from_wheels})
        if not problems:
            return {
                "needed": {r.name: spelled(r) for r in direct},
                "versions": {r.name: installed(r.name) for r in direct},
                "installed_from_wheels": from_wheels,
            }
        picked, missing = [], []
        for problem in problems:
            options = carried.get(canonicalize_name(problem.requirement.name), [])
            match = next((path for version, path in options if satisfied(problem.requirement, str(version))), None)
            if match is None or match.name in from_wheels:  # none fits, or installing it did not help
                missing.append(problem)
            else:
                picked.append(match)
        if missing:
            where = f"in {wheels}" if wheels else "(no --wheels folder given)"
            lines = [f"  {p.line()}: no wheel {where} satisfies it" for p in missing]
            raise GateError("unmet requirements, so nothing was started:\n" + "\n".join(lines))
        install(picked)
        importlib.invalidate_caches()  # importlib.metadata must see the new versions
        from_wheels += [path.name for path in picked]
    raise GateError(f"the wheels in {wheels} kept leaving requirements unmet after {ROUNDS} rounds: {from_wheels}")
