"""One JSON report per `posttrain eval` call (never written over an earlier one), and a table for the terminal."""

from __future__ import annotations

import json
import time
from pathlib import Path

from posttrain.errors import UserError
from posttrain.runs import locks

REPORTS = Path("evals")


def report_path(mode: str, output: Path | None) -> Path:
    """`output` if it is free, else a new evals/MODE-DATE-TIME.json; checked before any model is loaded. The path
    is locked until write_report, so that two evals never write the same report."""
    if output is not None:
        claim(output)
        if output.exists():
            locks.release(locks.sibling_lock(output))
            raise UserError(
                f"--output {output} already exists; eval never writes over a report. Choose another path, or leave "
                f"--output out for a new file under {REPORTS}/."
            )
        return output
    stamp = time.strftime("%Y%m%d-%H%M%S")
    candidate, number = REPORTS / f"{mode}-{stamp}.json", 1
    while candidate.exists() or not claimed_if_free(candidate):  # another eval of the same second took it
        number += 1
        candidate = REPORTS / f"{mode}-{stamp}-{number}.json"
    return candidate


def claim(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    locks.acquire(locks.sibling_lock(path), f"--output {path}")


def claimed_if_free(path: Path) -> bool:
    try:
        claim(path)
    except UserError:
        return False
    if path.exists():
        locks.release(locks.sibling_lock(path))
        return False
    return True


def write_report(path: Path, report: dict) -> None:
    """Write the report with when and with what it was made; "x" mode refuses a file that appeared meanwhile."""
    from posttrain.runs import library_versions

    record = report | {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "versions": library_versions()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("x", encoding="utf-8") as handle:
        handle.write(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    locks.release(locks.sibling_lock(path))


def table(rows: list[tuple[str, str]]) -> list[str]:
    """Two aligned columns between rules."""
    width = max(len(name) for name, _ in rows)
    rule = "-" * (width + 2 + max(len(value) for _, value in rows))
    return [rule, *(f"{name:<{width}}  {value}" for name, value in rows), rule]
