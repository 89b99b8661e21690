"""One-command GPU acceptance check (issue #13): every posttrain command on one GPU, as on a T4, in about 9 minutes.

On the GPU it emulates a T4 in this process, where every command runs through the CLI: compute capability 7.5, so
posttrain's automatic precision is fp16 for every command (generate and eval included); no flash SDPA; PyTorch's
memory capped at a T4's usable 14.5 GiB, which posttrain's plan also uses (POSTTRAIN_GPU_MEMORY_GIB). It runs
  - every training method the CLI lists (sft, reward, dpo, orpo, rs, ppo, and any added later) for a few steps, on
    tiny-llama2 (4-bit) and on a Llama-2-7B-shaped model with random weights and --layers decoder layers (the
    shipped llama2-7b/*-qlora-t4 recipes, as benchmarks/plan_vs_measured.py runs them), each with its peak
    torch.cuda.max_memory_allocated beside `posttrain plan`'s prediction;
  - generate, merge and eval (accuracy, winrate, perplexity) on the trained runs of both models;
  - seconds per step of posttrain against plain TRL with the same settings, for sft and dpo (7B shape);
  - a PPO run interrupted after a checkpoint and resumed with --resume, which must repeat the uninterrupted one;
  - with two GPUs or more, tiny-llama2 SFT in one process and in two under the ddp and fsdp presets (zero2 and zero3
    where DeepSpeed is installed), which must match it (benchmarks/gpu_check_two_gpus.py); skipped, saying so, on
    fewer (an estimated 2 to 4 minutes more, not measured: raise --budget-s, which its runs also obey).
It writes gpu_check.json and gpu_check.md into --output. First, within seconds and before anything loads, every
direct dependency must be at a version pyproject.toml admits (read when the check starts), and so must what those
packages require (benchmarks/gpu_check_gate.py); what is not is installed with --upgrade from --wheels (see
benchmarks/fetch_gpu_wheels.sh), and what no carried wheel satisfies is named (package, found, needed) and the check
stops (exit 2). It passes only when every command exits 0, no training run had more than 10% of its steps skipped by
fp16's loss scaler or logged a loss that is not a finite number, both speed rows were measured, PPO --resume
repeated the run and, when it ran, the two-GPU section passed. --tiny checks the script itself on a CPU: tiny-llama2
only, 2 steps, no 7B shape, no GPU figures.

    python benchmarks/gpu_check.py --output DIR [--wheels DIR [--install-into DIR]] [--layers 4] [--tiny] [--work DIR]
        [--budget-s 480] [--two-processes-on-cpu]
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from gpu_check_report import SPEED_METHODS, Report, failures, passed

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this tree's posttrain, installed or not
T4_USABLE_GIB = 14.5
T4_CAPABILITY = (7, 5)


# ---------------------------------------------------------------- what the check needs


def ensure_requirements(wheels: Path | None, target: Path | None = None) -> dict:
    """The version gate (gpu_check_gate.py), then an import of each direct dependency: a library that fails at
    import (a CUDA library not found) shows up here, before any command runs."""
    from functools import partial

    from gpu_check_gate import GateError, declared, gate, pip_install
    from packaging.utils import canonicalize_name

    pyproject, started = ROOT / "pyproject.toml", time.perf_counter()
    try:
        found = gate(pyproject, wheels, partial(pip_install, target=target)) | {"problem": None, "import_errors": {}}
    except GateError as err:
        return {"problem": str(err), "import_errors": {}}
    found["gate_s"] = round(time.perf_counter() - started, 1)  # the versions checked, the carried wheels installed
    modules = {}  # distribution: its importable top-level modules
    for module, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            modules.setdefault(canonicalize_name(dist), []).append(module)
    for requirement in declared(pyproject):
        names = sorted(m for m in modules.get(canonicalize_name(requirement.name), []) if not m.startswith("_"))
        module = requirement.name.replace("-", "_") if requirement.name.replace("-", "_") in names else names[0]
        try:
            importlib.import_module(module)
        except Exception as err:  # ImportError, or a library failing at import
            found["import_errors"][requirement.name] = f"{type(err).__name__}: {err}"[:300]
    return found


def emulate_t4() -> None:
    """Make this process's GPU act as a T4 for every command (they all run here, through the CLI): PyTorch's memory
    capped at a T4's usable 14.5 GiB, and posttrain planning for that much (activation_checkpointing: auto, the
    too-big warning); compute capability 7.5, so posttrain's automatic precision is fp16 everywhere (generate and
    eval included); no flash attention in SDPA, which a T4 lacks (the memory-efficient kernel remains)."""
    import torch

    from posttrain.plan.fit import GPU_MEMORY_VARIABLE

    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    torch.cuda.set_per_process_memory_fraction(min(1.0, T4_USABLE_GIB / total))
    os.environ[GPU_MEMORY_VARIABLE] = str(T4_USABLE_GIB)
    torch.cuda.get_device_capability = lambda device=None: T4_CAPABILITY
    torch.backends.cuda.enable_flash_sdp(False)


# ---------------------------------------------------------------- the parts


def train_methods(model: str, base: str, runs: Path, data: dict, steps: int, gpu: bool, timed: dict) -> list[dict]:
    """Every training method on one model, the 7B shape through the shipped T4 recipes where there is one."""
    from gpu_check_runs import train_and_measure, training_methods, write_small_recipe
    from gpu_check_speed import StepTimer

    rows = []
    for method in training_methods():
        try:  # a shipped recipe that does not load is this method's failure, never a fall back to a small recipe
            shipped = model != "tiny-llama2"
            recipe, settings = shipped_t4_recipe(method, Path(base), runs, steps) if shipped else (None, [])
        except Exception as err:
            rows.append({"model": model, "method": method, "command": f"posttrain {method}", "exit_code": None})
            rows[-1]["error"] = f"llama2-7b/{method}-qlora-t4 does not load: {type(err).__name__}: {err}"[:3000]
            continue
        if recipe is None:
            path = write_small_recipe(method, base, runs, data, steps, gpu)
            if path is None:
                error = "no small recipe passed its --dry-run: add the method to KNOWN in gpu_check_runs.py"
                rows.append({"model": model, "method": method, "command": f"posttrain {method}", "exit_code": None})
                rows[-1]["error"] = error
                continue
            recipe = str(path)
        timer = StepTimer().install() if method in SPEED_METHODS else None
        try:
            row = train_and_measure(method, model, recipe, settings, runs / method)
        finally:
            if timer:
                timed[method] = {"times": timer.remove()}  # plain TRL then runs with this run's recipe.yaml
        rows.append(row)
        print(f"{model} {method}: exit {row['exit_code']}, {row['seconds']} s, peak {row['peak_gib']} GiB", flush=True)
    return rows


def shipped_t4_recipe(method: str, base: Path, runs: Path, steps: int) -> tuple[str | None, list[str]]:
    """llama2-7b/METHOD-qlora-t4 pointed at the random model and rows that fill its max_length, as
    benchmarks/plan_vs_measured.py runs it; (None, []) for a method without a shipped T4 recipe. A recipe that is
    shipped but does not load raises."""
    from plan_vs_measured import settings_of, write_rows
    from transformers import AutoTokenizer

    from posttrain.recipe import load_recipe, shipped_recipes

    name = f"llama2-7b/{method}-qlora-t4"
    if name not in shipped_recipes():
        return None, []
    load_recipe(name)
    rows = write_rows(runs / f"{method}-rows.jsonl", method, AutoTokenizer.from_pretrained(base))
    if method == "rs":  # rs samples every prompt: 4 are enough to measure it
        rows.write_text("".join(rows.read_text().splitlines(keepends=True)[:4]))
    settings = settings_of(method, base, runs, rows)  # fp16 on a GPU, as on a T4
    return name, settings + ([f"train.max_steps={steps}"] if method in SPEED_METHODS else [])


def speed(model: str, timed: dict, model_dir: str, runs: Path, warmup: int) -> list[dict]:
    from gpu_check_runs import DEADLINE
    from gpu_check_speed import plain_trl_s_per_step, s_per_step

    rows = []
    for method, run in timed.items():
        if time.perf_counter() > DEADLINE["at"] or not run["times"]:
            continue
        row = {"model": model, "method": method, "posttrain_s_per_step": s_per_step(run["times"], warmup)}
        row["posttrain_step_times"] = [round(t, 4) for t in run["times"]]
        try:
            plain = plain_trl_s_per_step(method, runs / method, model_dir)
            row["trl_s_per_step"] = s_per_step(plain["times"], warmup)
            row["trl_step_times"] = plain["times"]
        except Exception as err:
            row["trl_error"] = f"{type(err).__name__}: {err}"[:1000]
        if row.get("trl_s_per_step") and row["posttrain_s_per_step"]:
            row["ratio"] = round(row["posttrain_s_per_step"] / row["trl_s_per_step"], 3)
        rows.append(row)
        print(f"speed {model} {method}: {row}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument(
        "--wheels", type=Path, help="carried wheels: what is missing or outside pyproject.toml's versions is installed"
    )
    parser.add_argument(
        "--install-into",
        type=Path,
        help="install the carried wheels into this folder (put first on sys.path) instead of this Python's environment",
    )
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the 7B-shaped model (7B has 32)")
    parser.add_argument(
        "--shape-config",
        type=Path,
        help="config.json of another shape instead of Llama 2 7B's (a small one checks that part on a CPU)",
    )
    parser.add_argument("--tiny", action="store_true", help="CPU plumbing check: tiny-llama2, 2 steps, no GPU figures")
    parser.add_argument("--work", type=Path, help="folder for models and runs (default: a new temporary one)")
    parser.add_argument("--budget-s", type=float, default=480, help="start no command after this many seconds")
    parser.add_argument(
        "--two-processes-on-cpu",
        action="store_true",
        help="run the two-GPU section as CPU processes (DDP over gloo, FSDP2): checks the section, no GPU figures",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the GPU machine has no network: fail at once, not on a timeout
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

    requirements = ensure_requirements(args.wheels, args.install_into)
    requirements["checked_s"] = round(time.perf_counter() - started, 1)
    report = Report(args.output, {"machine": platform.machine(), "emulating": None, "requirements": requirements})
    if requirements["problem"] or requirements["import_errors"]:
        report.data |= {"all_passed": False, "elapsed_s": round(time.perf_counter() - started, 1)}
        report.save()
        broken = [f"  {k} does not import: {v}" for k, v in requirements["import_errors"].items()]
        print("\n".join([requirements["problem"] or "", *broken]).strip(), file=sys.stderr)
        print(
            f"(also in {args.output / 'gpu_check.md'}) Fetch wheels with benchmarks/fetch_gpu_wheels.sh DIR on a "
            "machine with network, then pass --wheels DIR.",
            file=sys.stderr,
        )
        sys.exit(2)
    wheels = ", ".join(requirements["installed_from_wheels"]) or "nothing"
    print(
        f"versions met in {requirements['gate_s']} s (installed from the carried wheels: {wheels}); every direct "
        f"dependency imported by {requirements['checked_s']} s",
        flush=True,
    )
    import torch

    gpu = torch.cuda.is_available()
    if not gpu:  # the small models of a CPU check gain nothing from threads, and threads stall on a busy CPU
        torch.set_num_threads(1)
    if not gpu and not args.tiny and not args.shape_config:
        sys.exit("no GPU: run with --tiny (or --shape-config SMALL.json) to check the script itself on a CPU.")
    if gpu:
        emulate_t4()
    t4 = f"T4: fp16 (compute capability 7.5), no flash SDPA, PyTorch memory capped at {T4_USABLE_GIB} GiB"
    report.data |= {
        "machine": f"{platform.machine()}, {torch.cuda.get_device_name() if gpu else 'no GPU'}",
        "emulating": t4 if gpu else "no GPU: plumbing only",
        "cap_gib": T4_USABLE_GIB if gpu else None,
        "layers_of_7b_shape": None if args.tiny else args.layers,
        "methods": [],
        "use": [],
        "speed": [],
    }
    run_parts(args, report, gpu, started)
    report.data["elapsed_s"] = round(time.perf_counter() - started, 1)
    report.data["failures"] = failures(report.data)
    report.data["all_passed"] = passed(report.data)
    report.save()
    print(f"wrote {args.output / 'gpu_check.json'} and gpu_check.md; all passed: {report.data['all_passed']}")
    sys.exit(0 if report.data["all_passed"] else 1)


def run_parts(args, report: Report, gpu: bool, started: float) -> None:
    from gpu_check_runs import DEADLINE, ppo_resume, write_data

    DEADLINE["at"] = started + args.budget_s  # commands not started by then are reported with exit code None
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    data = write_data(work / "data")
    # the speed comparison runs on the T4-like model: the 7B shape on a GPU, tiny-llama2 in --tiny
    run_model(args, report, "tiny-llama2", "tiny-llama2", work / "tiny", data, gpu, timed=args.tiny)
    # a checkpoint every 2 steps of 4 on a GPU; every step of 2 in --tiny, where PPO steps are slow
    report.data["ppo_resume"] = ppo_resume(work / "tiny", work / "resume", data, gpu, save_steps=2 if gpu else 1)
    report.save()
    print(f"ppo --resume: {report.data['ppo_resume']}", flush=True)
    report.data["two_gpus"] = two_gpu_section(args, work / "two-gpus")
    report.save()
    if not args.tiny:
        from plan_vs_measured import CONFIG, build_model

        base = work / "llama2-7b-shape" / "model"
        if not (base / "config.json").is_file():
            build_model(base, args.shape_config or CONFIG, args.layers)
        shape = f"{args.shape_config.name} shape" if args.shape_config else "llama2-7b shape"
        run_model(args, report, f"{shape}, {args.layers} layers", str(base), base.parent, data, gpu, timed=True)


def two_gpu_section(args, work: Path) -> dict:
    """tiny-llama2 SFT in one process and in two under each preset (gpu_check_two_gpus.py); skipped, saying why,
    on fewer than two GPUs unless --two-processes-on-cpu. Its runs are new Pythons: they get this check's path."""
    import gc

    import torch
    from gpu_check_runs import DEADLINE
    from gpu_check_two_gpus import section

    gc.collect()
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        torch.cuda.empty_cache()  # what this process's own runs left cached on GPU 0, where one of the ranks runs
    python_path = [str(args.install_into)] if args.install_into else []
    python_path += [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return section(work, gpus, args.two_processes_on_cpu, python_path, DEADLINE["at"])


def run_model(args, report: Report, model: str, base: str, runs: Path, data: dict, gpu: bool, timed: bool) -> None:
    """Every training method, then generate, merge and eval, then (if timed) posttrain against plain TRL."""
    from gpu_check_runs import DEADLINE, use_commands

    # timed: 2 warm-up steps and 4 timed ones (1 and 1 in --tiny); else a few steps
    steps = 2 if args.tiny else 6 if timed else 3
    times: dict = {}
    report.data["methods"] += train_methods(model, base, runs, data, steps, gpu, times)
    report.save()
    report.data["use"] += [{"model": model} | row for row in use_commands(runs, data, gpu)]
    report.save()
    if timed and time.perf_counter() < DEADLINE["at"]:
        model_dir = base if base != "tiny-llama2" else str(runs / "use" / "merged")  # tiny-llama2's shape
        report.data["speed"] += speed(model, times, model_dir, runs, warmup=1 if args.tiny else 2)
        report.save()


if __name__ == "__main__":
    main()
