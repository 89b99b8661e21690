"""The two-GPU section of benchmarks/gpu_check.py (issue #28), for the day a machine with two GPUs is lent: the same
tiny-llama2 nf4 SFT in one process, then under `--num-processes 2` with the ddp preset and the fsdp preset (FSDP2),
and with zero2 and zero3 where DeepSpeed is installed. Every run sees the same rows per optimizer step (the global
batch); LoRA dropout is off, since each process draws its own dropout masks. Each two-process run passes when it
exits 0 and logs a finite, non-zero loss at every step, each within LOSS_RTOL of the one process's loss at that step.
Each run's seconds per step and each process's peak torch.cuda.max_memory_allocated are recorded, not judged.

With fewer than two GPUs the section is skipped and says why: that is not a pass, nothing was checked. The runs are
subprocesses (accelerate launch starts the processes), fp16 as on two T4s; the T4 emulation of the check's own
process does not reach them. `--two-processes-on-cpu` runs the section's plumbing as CPU processes (DDP over gloo,
FSDP2 with POSTTRAIN_FSDP_ON_CPU=1) in the CPU precision; its figures mean nothing for GPUs.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import yaml

PRESETS = ("ddp", "fsdp", "zero2", "zero3")
NEEDS_DEEPSPEED = {"zero2", "zero3"}
GLOBAL_BATCH = 4  # rows per optimizer step: 4 in one process, 2 in each of two
STEPS = 8
LEARNING_RATE = 1e-3
# Largest |loss - one process's loss| / |one process's loss| at any step. On CPUs in fp32 two processes stayed within
# 2e-7 (docs/benchmarks.md); fp16 rounds each activation to 2^-11 (4.9e-4) and the loss averages hundreds of tokens,
# so a correct split stays well inside this, while rows duplicated or missed across processes move a step's loss by
# the spread between rows (about 1e-2 on this model).
LOSS_RTOL = 1e-3
TIMEOUT_S = 600  # one run
# In every process of a run: on exit, its rank and peak GPU memory, written where the section reads them.
PEAK_HOOK = """
import atexit
import json
import os
import sys


def write_peak():
    torch = sys.modules.get("torch")
    if torch is None or "posttrain" not in sys.modules or not torch.cuda.is_initialized():
        return
    rank = os.environ.get("RANK", "0")
    path = os.path.join(os.environ["GPU_CHECK_PEAKS"], f"rank-{rank}.json")
    with open(path, "w") as file:
        json.dump({"rank": int(rank), "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}, file)


atexit.register(write_peak)
"""


def plan(gpus: int, deepspeed: bool, cpu_stand_in: bool = False) -> dict:
    """What the section does on a machine with `gpus` CUDA GPUs: {"skipped": why}, or the presets it runs and those
    it does not, with why. cpu_stand_in: run it as CPU processes, whatever the GPUs (plumbing only)."""
    if gpus < 2 and not cpu_stand_in:
        have = "no GPU" if gpus == 0 else "1 GPU"
        return {"skipped": f"this machine has {have}; the section needs 2 (skipped, not passed: nothing was checked)"}
    why_not = "needs CUDA (CPU stand-in)" if cpu_stand_in else None if deepspeed else "not installed (no deepspeed)"
    not_run = {preset: why_not for preset in PRESETS if preset in NEEDS_DEEPSPEED and why_not}
    return {"presets": [preset for preset in PRESETS if preset not in not_run], "not_run": not_run}


def write_recipe(folder: Path, processes: int, gpu: bool) -> Path:
    recipe = {
        "method": "sft",
        "model": {"name": "tiny-llama2", "quantization": "nf4", "precision": "fp16" if gpu else "auto"},
        "lora": {"dropout": 0.0},
        "data": {"train": "builtin:pirate_sft", "max_length": 192},
        "train": {
            "max_steps": STEPS,
            "per_device_train_batch_size": GLOBAL_BATCH // processes,
            "logging_steps": 1,
            "learning_rate": LEARNING_RATE,
            "activation_checkpointing": False,
            "save_strategy": "no",
            "report_to": "none",
        },
        "output_dir": str(folder / "run"),
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sft.yaml"
    path.write_text("# posttrain sft sft.yaml\n" + yaml.safe_dump(recipe), encoding="utf-8")
    return path


def train(folder: Path, preset: str | None, gpu: bool, python_path: list[str], deadline: float) -> dict:
    """One run: `posttrain sft` in one process (preset None) or in two under the preset; its row of the report.
    Not started (exit None) past the check's deadline (perf_counter time)."""
    processes = 2 if preset else 1
    command = [sys.executable, "-m", "posttrain", "sft", str(write_recipe(folder, processes, gpu))]
    command += ["--num-processes", "2", "--accelerate-config", preset] if preset else []
    row = {"layout": preset or "one process", "processes": processes, "command": "posttrain " + " ".join(command[3:])}
    if time.perf_counter() > deadline:
        return row | {"exit_code": None, "error": "not started: past the check's time budget (--budget-s)"}
    peaks, hook = folder / "peaks", folder / "hook"
    peaks.mkdir()
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(PEAK_HOOK, encoding="utf-8")
    env = os.environ | {"GPU_CHECK_PEAKS": str(peaks), "PYTHONPATH": os.pathsep.join([str(hook), *python_path])}
    if not gpu:  # CPU processes, whatever GPUs there are
        env |= {"CUDA_VISIBLE_DEVICES": ""} | ({"POSTTRAIN_FSDP_ON_CPU": "1"} if preset == "fsdp" else {})
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        return row | {"exit_code": None, "error": f"still running after {TIMEOUT_S} s: stopped"}
    row |= {"exit_code": done.returncode, "wall_s": round(time.perf_counter() - started, 1)}
    if done.returncode != 0:
        return row | {"error": (done.stdout + done.stderr)[-3000:]}
    metrics = json.loads((folder / "run" / "metrics.json").read_text(encoding="utf-8"))
    row["losses"] = [entry["loss"] for entry in metrics["log_history"] if "loss" in entry]
    row["s_per_step"] = round(metrics["train"]["train_runtime"] / STEPS, 4)  # the first step's warm-up included
    found = sorted((json.loads(path.read_text()) for path in peaks.glob("rank-*.json")), key=lambda one: one["rank"])
    row["peak_gib"] = [one["peak_gib"] for one in found] or None  # None: no CUDA (a CPU stand-in)
    return row


def section(work: Path, gpus: int, cpu_stand_in: bool, python_path: list[str], deadline: float) -> dict:
    """The section: the runs its plan asks for, one after another, each compared with the one process."""
    decided = plan(gpus, find_spec("deepspeed") is not None, cpu_stand_in)
    found = {"gpus": gpus, "loss_rtol": LOSS_RTOL, "global_batch": GLOBAL_BATCH, "steps": STEPS} | decided
    if "skipped" in decided:
        return found
    gpu = not cpu_stand_in
    found["precision"] = "fp16" if gpu else "CPU processes (fp32): plumbing only"
    found["runs"] = [train(work / "one", None, gpu, python_path, deadline)]
    for preset in decided["presets"]:
        found["runs"].append(train(work / preset, preset, gpu, python_path, deadline))
        print(f"two GPUs, {preset}: {summary(found['runs'][-1])}", flush=True)
    reference = found["runs"][0]
    for row in found["runs"][1:]:
        if not run_problems(row) and not run_problems(reference):
            row["largest_relative_difference"] = largest_difference(row["losses"], reference["losses"])
    return found


def summary(row: dict) -> str:
    return f"exit {row.get('exit_code')}, {row.get('s_per_step')} s/step, peak GiB per process {row.get('peak_gib')}"


def failures(found: dict | None) -> list[str]:
    """Why the section does not pass (none: it passed, or it was skipped, which the report states as such)."""
    if not found or "skipped" in found:
        return []
    reference, *two = found["runs"]
    problems = [f"two GPUs, {row['layout']}: {problem}" for row in found["runs"] for problem in run_problems(row)]
    if run_problems(reference):
        return problems + ["two GPUs: no one-process losses to compare the two-process runs with"]
    for row in two:
        if run_problems(row):
            continue
        worst = largest_difference(row["losses"], reference["losses"])
        if worst > found["loss_rtol"]:
            problems.append(
                f"two GPUs, {row['layout']}: losses differ from one process's by up to {worst:.2e} relative (allowed "
                f"{found['loss_rtol']:.0e}): {row['losses']} against {reference['losses']}"
            )
    return problems


def run_problems(row: dict) -> list[str]:
    """What is wrong with one run on its own: its exit, its number of losses, a loss that is not finite or is 0."""
    if row.get("exit_code") != 0:
        return [f"exited {row.get('exit_code')}" + (f": {row['error'][-300:]}" if row.get("error") else "")]
    losses = row.get("losses") or []
    if len(losses) != STEPS:
        return [f"logged {len(losses)} losses, not one for each of the {STEPS} steps"]
    if not all(math.isfinite(loss) and loss != 0 for loss in losses):
        return [f"logged a loss that is 0 or not a finite number: {losses}"]
    return []


def largest_difference(losses: list[float], reference: list[float]) -> float:
    return max(abs(loss - expected) / abs(expected) for loss, expected in zip(losses, reference, strict=True))


def markdown(found: dict | None) -> list[str]:
    """The section's lines in gpu_check.md."""
    lines = ["", "## Two GPUs: tiny-llama2 nf4 SFT, one process against two", ""]
    if not found:
        return lines + ["not reached"]
    if "skipped" in found:
        return lines + [f"**Skipped**: {found['skipped']}."]
    lines += [
        f"{found['steps']} steps, {found['global_batch']} rows per step in every layout, LoRA dropout 0, "
        f"{found['precision']}; a two-process run passes within {found['loss_rtol']:.0e} relative of one process's "
        "loss at every step.",
        "",
        "| layout | processes | exit | s/step | peak GiB per process | largest relative loss difference | losses |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in found["runs"]:
        losses = ", ".join(f"{loss:.6f}" for loss in row.get("losses") or [])
        difference = row.get("largest_relative_difference")
        lines.append(
            f"| {row['layout']} | {row['processes']} | {row.get('exit_code')} | {row.get('s_per_step', '–')} | "
            f"{row.get('peak_gib') or '–'} | {'–' if difference is None else f'{difference:.1e}'} | {losses} |"
        )
    lines += [f"| {preset} | 2 | not run: {why} | | | | |" for preset, why in found["not_run"].items()]
    return lines
