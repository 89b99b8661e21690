"""The report of benchmarks/gpu_check.py (gpu_check.json and gpu_check.md) and what makes the check pass."""

from __future__ import annotations

import json
import math
from pathlib import Path

import gpu_check_two_gpus as two_gpus

SPEED_METHODS = ("sft", "dpo")  # timed against plain TRL
MOST_SKIPPED = 0.10  # share of a run's optimizer steps fp16's loss scaler may skip (an overflow), and still pass


class Report:
    """gpu_check.json and gpu_check.md, rewritten after every part so an interrupted check still leaves one."""

    def __init__(self, folder: Path, data: dict):
        self.folder, self.data = folder, data
        folder.mkdir(parents=True, exist_ok=True)

    def save(self) -> None:
        (self.folder / "gpu_check.json").write_text(json.dumps(self.data, indent=2) + "\n", encoding="utf-8")
        (self.folder / "gpu_check.md").write_text(markdown(self.data), encoding="utf-8")


def cell(value) -> str:
    return "–" if value is None else str(value)


def markdown(d: dict) -> str:
    lines = [
        "# posttrain GPU check",
        "",
        f"- machine: {d['machine']}",
        f"- emulating: {d['emulating']}",
        f"- took {d.get('elapsed_s')} s; all passed: {d.get('all_passed')}",
    ]
    needs = d["requirements"]
    if needs["problem"] or needs["import_errors"]:
        lines += ["", "**Requirements not met, so nothing ran:**", "", "```", needs["problem"] or "", "```"]
        lines += [f"- {k} does not import: {v}" for k, v in needs["import_errors"].items()]
        return "\n".join(lines) + "\n"
    versions = [f"{k} {v} (needs {needs['needed'][k] or 'any'})" for k, v in needs["versions"].items()]
    lines += [f"- versions: {', '.join(versions)}"]
    lines += [f"- installed from the carried wheels: {', '.join(needs['installed_from_wheels']) or 'none'}"]
    lines += ["", "## Training methods", ""]
    lines += ["| model | method | exit | s | peak GiB | plan GiB | abs error GiB | loss or score, first → last | "]
    lines[-1] += "fp16 skipped |"
    lines += ["|---|---|---|---|---|---|---|---|---|"]
    for r in d.get("methods", []):
        first = next((r[k] for k in ("first_loss", "first_score") if k in r), None)
        last = next((r[k] for k in ("last_loss", "last_score") if k in r), None)
        skipped = f"{r['fp16_skipped']} of {r['optimizer_steps']}" if "fp16_skipped" in r else "–"
        lines.append(
            f"| {r['model']} | {r['method']} | {cell(r.get('exit_code'))} | {cell(r.get('seconds'))} | "
            f"{cell(r.get('peak_gib'))} | {cell(r.get('predicted_gib'))} | {cell(r.get('abs_error_gib'))} | "
            f"{cell(first)} → {cell(last)} | {skipped} |"
        )
    lines += ["", "## Using the trained runs", "", "| model | command | exit | s | peak GiB | result |"]
    lines += ["|---|---|---|---|---|---|"]
    for r in d.get("use", []):
        result = ", ".join(f"{k} {v:.4g}" for k, v in (r.get("result") or {}).items())
        lines.append(
            f"| {r['model']} | {r['command_name']} | {r['exit_code']} | {r['seconds']} | {cell(r['peak_gib'])} | "
            f"{result} |"
        )
    lines += ["", "## Seconds per step: posttrain vs plain TRL, same settings", ""]
    lines += ["| model | method | posttrain | plain TRL | posttrain / TRL |", "|---|---|---|---|---|"]
    for r in d.get("speed", []):
        lines.append(
            f"| {r['model']} | {r['method']} | {cell(r.get('posttrain_s_per_step'))} | "
            f"{cell(r.get('trl_s_per_step'))} | {cell(r.get('ratio'))} |"
        )
    resume = d.get("ppo_resume") or {}
    lines += ["", "## PPO --resume", "", f"reproduced: {resume.get('reproduced')}; "]
    lines[-1] += f"largest relative difference {cell(resume.get('max_relative_difference'))}"
    if "two_gpus" in d:
        lines += two_gpus.markdown(d["two_gpus"])
    if d.get("failures"):
        lines += ["", "## Why it did not pass", ""] + [f"- {line}" for line in d["failures"]]
    errors = [r for r in d.get("methods", []) + d.get("use", []) if r.get("error")]
    if errors:
        lines += ["", "## Errors"]
        for r in errors:
            lines += ["", f"`{r['command']}`", "", "```", r["error"][-1500:], "```"]
    commands = d.get("methods", []) + d.get("use", [])
    skipped = [r["command"] for r in commands if r.get("exit_code") is None and not r.get("error")]
    if skipped:
        lines += ["", "Not started, past the time budget (--budget-s):"] + [f"- `{command}`" for command in skipped]
    return "\n".join(lines) + "\n"


def passed(d: dict) -> bool:
    """Every command exited 0; no training run logged a loss that is not a finite number or had more than 10% of its
    optimizer steps skipped by fp16's loss scaler; posttrain and plain TRL were both timed for each speed method; the
    resumed PPO run repeated the uninterrupted one; and, on two GPUs, every two-process run matched one process."""
    return not failures(d)


def failures(d: dict) -> list[str]:
    """Why the check does not pass, one line each (none when it passes)."""
    commands = d["methods"] + d["use"]
    found = [] if commands else ["no command ran"]
    found += [f"`{r['command']}` exited {r.get('exit_code')}" for r in commands if r.get("exit_code") != 0]
    for r in d["methods"]:
        where = f"{r['model']} {r['method']}"
        if not all(math.isfinite(loss) for loss in r.get("losses", [])):
            found.append(f"{where} logged a loss that is not a finite number: {r['losses']}")
        if r.get("fp16_skipped") and r["fp16_skipped"] > MOST_SKIPPED * max(r.get("optimizer_steps") or 0, 1):
            found.append(f"{where}: fp16 skipped {r['fp16_skipped']} of {r['optimizer_steps']} optimizer steps")
    measured = {r["method"] for r in d["speed"] if r.get("trl_s_per_step") and r.get("posttrain_s_per_step")}
    found += [f"no speed row for {m} with both sides timed" for m in SPEED_METHODS if m not in measured]
    if not (d.get("ppo_resume") or {}).get("reproduced"):
        found.append("PPO --resume did not repeat the uninterrupted run")
    return found + two_gpus.failures(d.get("two_gpus"))  # skipped (fewer than two GPUs): stated, not failed
