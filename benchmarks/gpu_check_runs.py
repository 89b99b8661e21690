"""The posttrain commands of benchmarks/gpu_check.py: each run in this process through the CLI (so the memory cap
set on this process applies to it), with its peak GPU memory; the recipes every training method runs with; and the
commands that use the trained runs (generate, merge, eval).

posttrain is used only through its CLI and its run folders, so this keeps working while its modules move.
"""

from __future__ import annotations

import gc
import json
import re
import shlex
import shutil
import time
import traceback
from pathlib import Path

import torch
import yaml
from typer.testing import CliRunner

from posttrain.cli import app

GIB = 2**30
# perf_counter() time after which no command starts: gpu_check.py sets it so that the check ends in its budget
DEADLINE = {"at": float("inf")}
STARTERS = ("sft", "reward")  # the runs other methods start from or score with: trained first


# ---------------------------------------------------------------- running one command


def invoke(args: list[str]) -> dict:
    """Run `posttrain ARGS` here: exit code, seconds, and on a GPU the peak memory PyTorch allocated."""
    if time.perf_counter() > DEADLINE["at"]:
        return {"command": "posttrain " + shlex.join(args), "exit_code": None, "seconds": 0, "peak_gib": None}
    cuda = torch.cuda.is_available()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if cuda else None
    started = time.perf_counter()
    result = CliRunner().invoke(app, args)
    record = {
        "command": "posttrain " + shlex.join(args),
        "exit_code": result.exit_code,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 3) if cuda else None,
        # what earlier commands still held when this one started (counted in its peak)
        "held_before_gib": round(before / GIB, 3) if cuda else None,
    }
    if result.exit_code != 0:
        crash = "".join(traceback.format_exception(*result.exc_info)) if result.exc_info else ""
        record["error"] = (result.output + crash)[-3000:]
    return record


def training_methods() -> list[str]:
    """Every training command the CLI has (those taking --resume), the runs others start from first, so a method
    added to posttrain is checked here without a change to this script."""
    import typer.main

    commands = typer.main.get_command(app).commands
    found = [name for name, command in commands.items() if any(p.name == "resume" for p in command.params)]
    return [m for m in STARTERS if m in found] + [m for m in found if m not in STARTERS]


def section_keys(method: str) -> set[str]:
    """The keys of a method's own recipe section (`ppo:`, `rs:`), read from `posttrain recipes --keys`."""
    lines = CliRunner().invoke(app, ["recipes", "--keys"]).output.splitlines()
    keys, inside = set(), False
    for line in lines:
        if line.startswith(f"{method}:"):
            inside = True
        elif inside and line.startswith("  "):
            keys.add(line.split()[0])
        elif inside:
            break
    return keys


def predicted_gib(recipe: str, settings: list[str]) -> dict:
    """`posttrain plan`'s predicted peak for a T4 (its largest phase total), or why there is none."""
    args = ["plan", recipe, *[part for s in settings for part in ("--set", s)], "--gpu", "t4"]
    result = CliRunner().invoke(app, args)
    totals = [float(m) for m in re.findall(r"^\s*total\s+([\d.]+) GiB", result.output, flags=re.MULTILINE)]
    if result.exit_code != 0 or not totals:
        return {"predicted_gib": None, "plan_error": result.output[-1000:]}
    return {"predicted_gib": max(totals)}


def headline(run: Path) -> dict:
    """From a finished run's metrics.json: first and last loss (TRL methods, rs) or score (ppo), every logged loss
    (passed() refuses one that is not a finite number), and the share of optimizer steps fp16's loss scaler skipped
    where the run records it (TRL methods: fp16_skipped_steps of final_step; ppo: fp16_skipped_updates of its
    updates; rs keeps no count in its metrics.json)."""
    path = run / "metrics.json"
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text(encoding="utf-8"))  # json reads the NaN and Infinity Python writes
    if "steps" in metrics:  # ppo
        entries, name = metrics["steps"], "score"
    elif "rounds" in metrics:  # rs
        entries, name = metrics["rounds"], "train_loss"
    else:
        entries, name = metrics.get("log_history", []), "loss"
    values = [e[name] for e in entries if name in e]
    label = "score" if name == "score" else "loss"
    found = {f"first_{label}": round(values[0], 4), f"last_{label}": round(values[-1], 4)} if values else {}
    found["losses"] = [v for e in entries for k, v in e.items() if "loss" in k and isinstance(v, int | float)]
    return found | skipped_share(run, metrics)


def skipped_share(run: Path, metrics: dict) -> dict:
    """fp16_skipped and the optimizer steps (updates, for ppo) it is a share of, or {} where the run has no count."""
    if "fp16_skipped_steps" in metrics:
        return {"fp16_skipped": metrics["fp16_skipped_steps"], "optimizer_steps": metrics.get("final_step")}
    if "fp16_skipped_updates" in metrics:  # ppo: ppo_epochs passes over the batch, one update per mini-batch
        ppo = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))["ppo"]
        per_step = ppo["ppo_epochs"] * -(-ppo["batch_size"] // ppo["mini_batch_size"])
        return {"fp16_skipped": metrics["fp16_skipped_updates"], "optimizer_steps": per_step * len(metrics["steps"])}
    return {}


def train_and_measure(method: str, model: str, recipe: str, settings: list[str], run: Path) -> dict:
    """The plan's prediction, then the run itself: one row of the report."""
    settings = settings + [f"output_dir={run}"]
    row = {"model": model, "method": method} | predicted_gib(recipe, settings)
    row |= invoke([method, recipe, *[part for s in settings for part in ("--set", s)], "--overwrite"])
    row |= headline(run)
    if row["predicted_gib"] is not None and row["peak_gib"]:
        row["abs_error_gib"] = round(abs(row["predicted_gib"] - row["peak_gib"]), 3)
        row["predicted_over_measured"] = round(row["predicted_gib"] / row["peak_gib"], 3)
    return row


# ---------------------------------------------------------------- small recipes on any base model

KIND = "Arr! Happy to help, matey: it sails at dawn. Fair winds!"
RUDE = "Arr! Go away and find it yerself, landlubber. Fair winds!"


def write_data(folder: Path) -> dict[str, str]:
    """Small data files every small recipe reads: conversations, preference pairs and prompts."""
    folder.mkdir(parents=True, exist_ok=True)
    questions = [f"Tell me about ship number {i}." for i in range(16)]
    turns = [[{"role": "user", "content": q}, {"role": "assistant", "content": KIND}] for q in questions]
    rows = {
        "sft": [{"messages": messages} for messages in turns],
        "pairs": [{"prompt": q, "chosen": KIND, "rejected": RUDE} for q in questions],
        "prompts": [{"prompt": q} for q in questions[:4]],
    }
    for name, content in rows.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in content), encoding="utf-8")
    return {name: str(folder / f"{name}.jsonl") for name in rows}


def small_recipe(method: str, base: str, runs: Path, data: str, start: str, steps: int, gpu: bool) -> dict:
    """A recipe of a few steps on `base`: 4-bit and fp16 on a GPU (a T4's settings), full precision on a CPU."""
    recipe = {
        "method": method,
        "model": {
            "name": str(runs / "sft") if start == "sft" else base,
            "quantization": "nf4" if gpu else "none",
            "precision": "fp16" if gpu else "auto",
        },
        "data": {"train": data, "max_length": 192},
        "train": {
            "max_steps": steps,
            "per_device_train_batch_size": 2,
            "learning_rate": 1e-3,
            "logging_steps": 1,
            "activation_checkpointing": False,
            "save_strategy": "no",
            "report_to": "none",
        },
        "output_dir": str(runs / method),
    }
    keys = section_keys(method)
    # keep_cut_off: a random model's answers never end, and rs would leave every prompt out
    section = {"reward": str(runs / "reward"), "iterations": 1, "samples_per_prompt": 2, "max_new_tokens": 8}
    section["keep_cut_off"] = True
    section |= {"chain": 2, "rewards": [{"max_words": 10}]}  # gatt chains single prompts; grpo needs a reward
    section["eval_prompts"] = None  # the held-out check of ppo and rs judges answers; random weights give none
    if "steps" in keys:  # posttrain's own trainers (ppo) count steps in their section, and have no train:
        section |= {"steps": steps, "batch_size": 2, "mini_batch_size": 1}
        del recipe["train"]
    if method == "grpo":  # a micro-batch holds whole groups of answers
        recipe["train"] |= {"num_generations": 2, "max_completion_length": 8}
    section = {key: value for key, value in section.items() if key in keys}  # only what the method has
    if section:
        recipe[method] = section
    return recipe


# Data and starting point of each known method; a method not listed is tried with each until its dry run passes.
KNOWN = {
    "sft": ("sft", "base"),
    "reward": ("pairs", "base"),
    "dpo": ("pairs", "sft"),
    "orpo": ("pairs", "base"),
    "rs": ("prompts", "sft"),
    "ppo": ("prompts", "sft"),
    "kto": ("pairs", "sft"),
    "grpo": ("prompts", "sft"),
    "gatt": ("prompts", "sft"),
    "distill": ("prompts", "sft"),
}
GUESSES = [(data, start) for data in ("pairs", "sft", "prompts") for start in ("sft", "base")]


def write_small_recipe(method: str, base: str, runs: Path, data: dict, steps: int, gpu: bool) -> Path | None:
    """The recipe file `method` runs with on `base`, or None when no guess passes its --dry-run."""
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / f"{method}.yaml"
    for kind, start in [KNOWN[method]] if method in KNOWN else GUESSES:
        recipe = small_recipe(method, base, runs, data[kind], start, steps, gpu)
        path.write_text(f"# posttrain {method} {path.name}\n" + yaml.safe_dump(recipe), encoding="utf-8")
        if method in KNOWN or CliRunner().invoke(app, [method, str(path), "--dry-run", "--overwrite"]).exit_code == 0:
            return path
    return None


# ---------------------------------------------------------------- using the trained runs


def use_commands(runs: Path, data: dict, gpu: bool) -> list[dict]:
    """generate, merge and eval (accuracy, winrate, perplexity) on the sft, reward and dpo runs."""
    sft, reward, dpo = (str(runs / name) for name in ("sft", "reward", "dpo"))
    out = runs / "use"
    knobs = ["--max-new-tokens", "16", "--batch-size", "4"]
    commands = {
        "generate": ["generate", sft, "--prompts", data["prompts"], "--output", str(out / "generate.jsonl"), *knobs],
        "merge": ["merge", sft, "--output", str(out / "merged"), "--dtype", "fp16" if gpu else "fp32"],
        "eval accuracy": ["eval", "accuracy", reward, "--data", data["pairs"], "--output", str(out / "accuracy.json")],
        "eval winrate": ["eval", "winrate", dpo, sft, "--prompts", data["prompts"], "--judge", reward, *knobs]
        + ["--bootstrap", "200", "--output", str(out / "winrate.json")],
        "eval perplexity": ["eval", "perplexity", str(out / "merged"), "--data", data["sft"]]
        + ["--output", str(out / "perplexity.json")],
    }
    rows = []
    for name, args in commands.items():
        out.mkdir(parents=True, exist_ok=True)
        row = {"command_name": name} | invoke(args)
        report = out / f"{name.split()[-1]}.json"
        if row["exit_code"] == 0 and report.is_file():
            row["result"] = {k: v for k, v in json.loads(report.read_text()).items() if isinstance(v, int | float)}
        elif row["exit_code"] == 0 and name == "generate":
            row["result"] = {"rows": len((out / "generate.jsonl").read_text().splitlines())}
        rows.append(row)
    return rows


# ---------------------------------------------------------------- PPO --resume


def ppo_resume(runs: Path, out: Path, data: dict, gpu: bool, save_steps: int) -> dict:
    """PPO from the sft and reward runs in `runs`: 2 x save_steps steps with a checkpoint every save_steps, then, as
    if killed after the first checkpoint, the rest thrown away and the run resumed. It must repeat the whole run."""
    out.mkdir(parents=True, exist_ok=True)
    steps = 2 * save_steps
    recipe = small_recipe("ppo", "", runs, data["prompts"], "sft", steps, gpu)
    recipe["ppo"]["save_steps"] = save_steps
    recipe["output_dir"] = str(out / "ppo")
    path = out / "ppo.yaml"
    path.write_text("# posttrain ppo ppo.yaml\n" + yaml.safe_dump(recipe), encoding="utf-8")
    whole = invoke(["ppo", str(path), "--overwrite"])
    if whole["exit_code"] != 0:
        return {"reproduced": False, "uninterrupted": whole}
    run = out / "ppo"
    expected = json.loads((run / "metrics.json").read_text())["steps"]
    shutil.rmtree(run / "checkpoints" / f"checkpoint-{steps}")
    shutil.rmtree(run / "adapter")
    (run / "metrics.json").unlink()
    resumed = invoke(["ppo", str(path), "--resume"])
    if resumed["exit_code"] != 0:
        return {"reproduced": False, "uninterrupted": whole, "resumed": resumed}
    got = json.loads((run / "metrics.json").read_text())["steps"]
    keys = ("score", "kl", "policy_loss", "value_loss", "entropy")
    diffs = [
        abs(a[k] - b[k]) / max(abs(a[k]), 1e-6) for a, b in zip(expected, got, strict=False) for k in keys if k in a
    ]
    worst = max(diffs, default=float("inf"))
    return {
        "reproduced": len(got) == len(expected) == steps and worst <= 1e-3,
        "steps": [len(expected), len(got)],
        "max_relative_difference": worst,
        "uninterrupted_s": whole["seconds"],
        "resumed_s": resumed["seconds"],
    }
