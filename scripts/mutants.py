"""Mutation testing of posttrain's core invariants: `make mutants` (or `python scripts/mutants.py [MODULE ...]`).

Each mutant is a plausible bug written as a text replacement in one source file (scripts/mutant_list.py). The
package and its tests are copied to a temporary folder, so the checkout is never touched; each mutant is applied
to the copy, the fast tests named for its module run against it, and the file is restored. A mutant is killed
when a test fails (or the run times out), survived when they all pass, and equivalent when it survived and the
list explains why no test can tell it from the original. The report (per module and per mutant) is written as
JSON; docs/testing.md says which test kills which mutant.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from mutant_list import MODULES, MUTANTS  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COPIED = ("posttrain", "tests", "recipes", "pyproject.toml")
# pytest's cache, and the plugins whose garbage collections at exit took most of a mutant's time
PLUGINS_OFF = ("-p", "no:cacheprovider", "-p", "no:unraisableexception", "-p", "no:threadexception")


def copy_repo(target: Path) -> None:
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target / name)


def preload() -> None:
    """Import the heavy libraries once, here; each mutant's tests run in a fork of this process, which imports
    posttrain afresh from the mutated copy (this process never imports it). Under load this saves a minute a mutant."""
    import importlib

    for name in ("torch", "numpy", "yaml", "jinja2", "typer.testing", "pytest", "transformers", "peft", "trl"):
        importlib.import_module(name)
    import transformers
    import trl

    for module, name in ((transformers, "AutoTokenizer"), (transformers, "AutoModelForCausalLM"), (trl, "SFTTrainer")):
        getattr(module, name)  # their lazy submodules
    gc.freeze()  # what is loaded now is never collected: the children's garbage collections skip it


def run_tests(copy: Path, tests: list[str], timeout: int) -> tuple[str, float, str]:
    """('pass' | 'fail' | 'timeout', CPU seconds, the first failing test or the output's end), from a forked pytest."""
    log = copy.parent / "pytest.log"
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child: pytest on the copy, its output to the log
        code = 3
        try:
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(copy)
            sys.path.insert(0, str(copy))
            import pytest

            code = int(pytest.main(["-x", "-q", "--no-header", *PLUGINS_OFF, *tests]))
        finally:
            os._exit(code)
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() - start > timeout:
            os.kill(pid, signal.SIGKILL)
            _, _, usage = os.wait4(pid, 0)
            return "timeout", usage.ru_utime + usage.ru_stime, f"no result within {timeout} s"
        time.sleep(0.2)
    cpu = usage.ru_utime + usage.ru_stime  # of the tests and the processes they ran; wall time depends on the load
    if os.waitstatus_to_exitcode(status) == 0:
        return "pass", cpu, ""
    output = log.read_text(errors="replace")
    found = re.search(r"^(FAILED|ERROR) (\S+)", output, re.MULTILINE)
    return "fail", cpu, found.group(2) if found else output.strip()[-300:]


def apply(path: Path, old: str, new: str) -> str:
    text = path.read_text(encoding="utf-8")
    if text.count(old) != 1:
        raise SystemExit(f"{path}: the mutant's original text occurs {text.count(old)} times (the list is stale)")
    path.write_text(text.replace(old, new), encoding="utf-8")
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help=f"modules to mutate (default: all of {', '.join(MODULES)})")
    parser.add_argument("--output", default="benchmarks/results/mutants.json", help="JSON report to write")
    parser.add_argument("--timeout", type=int, default=300, help="seconds before a mutant's tests count as hung")
    args = parser.parse_args()
    chosen = args.modules or list(MODULES)
    unknown = set(chosen) - set(MODULES)
    if unknown:
        parser.error(f"unknown modules {sorted(unknown)}; known: {', '.join(MODULES)}")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the copy is removed
    work = Path(tempfile.mkdtemp(prefix="posttrain-mutants-"))
    copy = work / "repo"
    copy_repo(copy)
    os.environ.update(  # for the forked tests and the processes they start
        PYTHONPATH=str(copy),  # the copy's package, ahead of the editable install of the checkout
        PYTHONDONTWRITEBYTECODE="1",  # a restored file must never be read from a stale .pyc
        POSTTRAIN_CACHE=str(work / "cache"),  # built-in models materialised once for every mutant
        OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
    )
    sys.dont_write_bytecode = True
    preload()
    report = {"modules": {}, "mutants": [], "load_average_at_start": round(os.getloadavg()[0], 1)}
    started, cpu = time.monotonic(), 0.0
    try:
        for module in chosen:
            tests = MODULES[module]
            outcome, seconds, detail = run_tests(copy, tests, args.timeout)
            cpu += seconds
            if outcome != "pass":
                raise SystemExit(f"{module}: its tests fail before any mutation ({detail}); fix them first")
            print(f"== {module}: its tests pass unmutated ({seconds:.0f} s of CPU)", flush=True)
            counts = {"killed": 0, "survived": 0, "equivalent": 0}
            for mutant in (m for m in MUTANTS if m["module"] == module):
                path = copy / mutant["file"]
                original = apply(path, mutant["old"], mutant["new"])
                try:
                    outcome, seconds, detail = run_tests(copy, mutant.get("tests", tests), args.timeout)
                finally:
                    path.write_text(original, encoding="utf-8")
                cpu += seconds
                status = "survived" if outcome == "pass" else "killed"
                if status == "survived" and mutant.get("equivalent"):
                    status = "equivalent"
                counts[status] += 1
                report["mutants"].append(
                    {k: mutant[k] for k in ("module", "file", "name")}
                    | {
                        "status": status,
                        "cpu_seconds": round(seconds, 1),
                        "killed_by": detail if outcome != "pass" else "",
                    }
                    | ({"equivalent": mutant["equivalent"]} if mutant.get("equivalent") else {})
                )
                print(f"   {status:10} {seconds:5.0f} s CPU  {mutant['name']}  {detail[:100]}", flush=True)
            report["modules"][module] = counts | {"tests": tests}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["minutes"] = round((time.monotonic() - started) / 60, 1)  # wall time, which the machine's load stretches
    report["cpu_minutes"] = round(cpu / 60, 1)
    output = REPO / args.output
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"\n{'module':16} killed survived equivalent")
    for module, counts in report["modules"].items():
        print(f"{module:16} {counts['killed']:6} {counts['survived']:8} {counts['equivalent']:10}")
    print(f"{report['minutes']} minutes ({report['cpu_minutes']} of CPU); report: {args.output}")
    if any(counts["survived"] for counts in report["modules"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
