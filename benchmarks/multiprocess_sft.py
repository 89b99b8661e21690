"""tiny-llama2 SFT (nf4) in one process, in two DDP processes and in two FSDP processes, with the same global batch:
the loss of every step side by side, seconds per step, and the peak resident memory of each training process.
On a machine without CUDA the FSDP run is FSDP2 over gloo, which posttrain allows for testing (POSTTRAIN_FSDP_ON_CPU=1,
set here for that run only). LoRA dropout is off: each process draws its own dropout masks, so with it two processes
would not compute what one process does.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/multiprocess_sft.py [--steps 8]

Writes benchmarks/results/multiprocess_sft.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

GLOBAL_BATCH = 4
LAYOUTS = {"one process": (1, None), "ddp, 2 processes": (2, "ddp"), "fsdp, 2 processes": (2, "fsdp")}
RESULTS = Path(__file__).parent / "results" / "multiprocess_sft.json"


def write_recipe(folder: Path, processes: int, steps: int) -> Path:
    recipe = {
        "method": "sft",
        "model": {"name": "tiny-llama2", "quantization": "nf4"},
        "lora": {"dropout": 0.0},
        "data": {"train": "builtin:pirate_sft", "max_length": 192},
        "train": {
            "max_steps": steps,
            "per_device_train_batch_size": GLOBAL_BATCH // processes,  # the same rows per step in every layout
            "logging_steps": 1,
            "learning_rate": 1e-3,
            "activation_checkpointing": False,
            "save_strategy": "no",
            "report_to": "none",
        },
        "output_dir": str(folder / "run"),
    }
    path = folder / "sft.yaml"
    path.write_text("# posttrain sft sft.yaml\n" + yaml.safe_dump(recipe), encoding="utf-8")
    return path


def watch_memory(root: psutil.Process, launched: bool, peaks: dict, stop: threading.Event) -> None:
    """Peak RSS of each training process: rank -> bytes. Under a launch only the launched processes count (the
    first process checks the recipe, then becomes the launcher)."""
    while not stop.is_set():
        try:
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        for process in family:
            try:
                env, command = process.environ(), " ".join(process.cmdline())
                if "-m posttrain" not in command or "accelerate.commands.launch" in command:
                    continue
                if launched and "POSTTRAIN_LAUNCHED" not in env:
                    continue
                rank = env.get("RANK", "0")
                peaks[rank] = max(peaks.get(rank, 0), process.memory_info().rss)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.1)


def run(layout: str, steps: int, folder: Path) -> dict:
    processes, preset = LAYOUTS[layout]
    command = [sys.executable, "-m", "posttrain", "sft", str(write_recipe(folder, processes, steps))]
    if preset:
        command += ["--num-processes", str(processes), "--accelerate-config", preset]
    started, peaks, stop = time.perf_counter(), {}, threading.Event()
    env = dict(os.environ, POSTTRAIN_FSDP_ON_CPU="1") if preset == "fsdp" else None
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    watcher = threading.Thread(target=watch_memory, args=(psutil.Process(child.pid), bool(preset), peaks, stop))
    watcher.start()
    output = child.communicate()[0]
    stop.set()
    watcher.join()
    wall = time.perf_counter() - started
    if child.returncode != 0:
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        return {"command": command[1:], "exit": child.returncode, "refused": errors[-1] if errors else output[-600:]}
    metrics = json.loads((folder / "run" / "metrics.json").read_text())
    losses = [entry["loss"] for entry in metrics["log_history"] if "loss" in entry]
    return {
        "command": command[1:],
        "losses": losses,
        "s_per_step": round(metrics["train"]["train_runtime"] / steps, 3),
        "wall_s": round(wall, 1),
        "peak_rss_mib": {rank: round(size / 2**20) for rank, size in sorted(peaks.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    args = parser.parse_args()
    results = {"global_batch": GLOBAL_BATCH, "steps": args.steps, "layouts": {}}
    for layout in LAYOUTS:
        with tempfile.TemporaryDirectory() as folder:
            results["layouts"][layout] = run(layout, args.steps, Path(folder))
        print(layout, json.dumps(results["layouts"][layout]), flush=True)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
