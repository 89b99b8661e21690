"""PPO, rejection-sampling and GRPO speed on smollm2-135m with the shipped recipes
(recipes/smollm2-135m/{ppo,rs,grpo}.yaml), on this machine: seconds per PPO and GRPO step split into generation /
scoring / optimisation, seconds per rejection-sampling round split into sampling+scoring / fine-tuning, and each
command's peak resident memory. PPO runs twice: with activation checkpointing (the default) and without. GRPO's
split comes from timers around TRL's GRPOTrainer (benchmarks/grpo_timed.py).

The SFT and reward runs they start from are the shipped recipes cut to a few steps (their quality does not change
the cost of a step). Each command runs as its own process, as a user runs it. Writes benchmarks/results/rl_speed.json.

    python benchmarks/rl_speed.py [--ppo-steps 6] [--rs-prompts 16] [--grpo-steps 4] [--only ppo rs grpo]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "rl_speed.json"


def posttrain(*args: str, runner: tuple[str, ...] = ("-m", "posttrain")) -> dict:
    """Run one posttrain command; its wall time and peak RSS (this child only)."""
    started = time.perf_counter()
    child = subprocess.Popen([sys.executable, *runner, *args], stdout=subprocess.PIPE, text=True)
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    if status != 0:
        sys.exit(f"posttrain {' '.join(args)} failed:\n{output}")
    return {"wall_s": round(time.perf_counter() - started, 1), "peak_rss_gb": round(usage.ru_maxrss / 1e6, 2)}


def mean(values: list[float]) -> float:
    return round(sum(values) / len(values), 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--ppo-steps", type=int, default=6, help="PPO steps to run (those that update the policy are timed)"
    )
    parser.add_argument("--rs-prompts", type=int, default=16, help="prompts sampled in the one timed rs round")
    parser.add_argument("--grpo-steps", type=int, default=4, help="GRPO steps to time (the first is warm-up)")
    parser.add_argument("--only", nargs="+", choices=["ppo", "rs", "grpo"], default=["ppo", "rs", "grpo"])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="rl-speed-"))
    sft, reward = work / "sft", work / "reward"
    posttrain("sft", "smollm2-135m/sft", "--set", "train.max_steps=4", "--output-dir", str(sft))
    posttrain("reward", "smollm2-135m/reward", "--set", "train.max_steps=4", "--output-dir", str(reward))
    chain = ["--set", f"model.name={sft}"]

    result = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}  # --only keeps the rest
    if "ppo" in args.only:
        result["ppo"] = time_ppo(work, chain, reward, args.ppo_steps)
    if "rs" in args.only:
        result["rs"] = time_rs(work, chain, reward, args.rs_prompts)
    if "grpo" in args.only:
        result["grpo"] = time_grpo(work, chain, reward, args.grpo_steps)

    import torch

    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    result["machine"] = f"{platform.machine()}, {os.cpu_count()} CPU cores, {gpu}"
    result["model"] = "smollm2-135m, nf4, recipes/smollm2-135m/{ppo,rs,grpo}.yaml"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


def time_ppo(work: Path, chain: list[str], reward: Path, steps: int) -> dict:
    ppo = {}
    for checkpointing in ("true", "false"):  # the default, then keeping every activation
        folder = work / f"ppo-checkpointing-{checkpointing}"
        run = posttrain(
            "ppo", "smollm2-135m/ppo", *chain, "--set", f"ppo.reward={reward}",
            "--set", f"ppo.steps={steps}", "--set", f"ppo.activation_checkpointing={checkpointing}",
            "--set", "ppo.eval_prompts=null",  # timing the steps, not the held-out check
            "--output-dir", str(folder),
        )  # fmt: skip
        # the recipe's value warm-up steps skip the policy update (and the ptx loss): time the updating steps only
        timed = [s for s in json.loads((folder / "metrics.json").read_text())["steps"] if s["policy_updated"]]
        keys = ("generation_s", "scoring_s", "optimisation_s", "response_length")
        run |= {key: mean([s[key] for s in timed]) for key in keys}
        run["s_per_step"] = round(run["generation_s"] + run["scoring_s"] + run["optimisation_s"], 2)
        run["timed_steps"] = len(timed)
        ppo[f"activation_checkpointing_{checkpointing}"] = run
    return ppo


def time_rs(work: Path, chain: list[str], reward: Path, prompt_count: int) -> dict:
    from posttrain.data.sources import read_rows

    prompts = work / "prompts.jsonl"
    rows = read_rows("builtin:pirate_sft")[:prompt_count]
    prompts.write_text("".join(json.dumps(row.data) + "\n" for row in rows), encoding="utf-8")
    rs = posttrain(
        "rs", "smollm2-135m/rs", *chain, "--set", f"rs.reward={reward}", "--set", "rs.iterations=1",
        "--set", f"data.train={prompts}", "--set", "rs.eval_prompts=null", "--output-dir", str(work / "rs"),
    )  # fmt: skip
    round_one = json.loads((work / "rs" / "metrics.json").read_text())["rounds"][0]
    rs |= {"prompts": len(rows), "sampling_s": round_one["sampling_s"], "fine_tuning_s": round_one["fine_tuning_s"]}
    rs["sampling_s_per_prompt"] = round(rs["sampling_s"] / len(rows), 2)
    return rs


def time_grpo(work: Path, chain: list[str], reward: Path, steps: int) -> dict:
    """The shipped grpo recipe (its rewards, with this run's reward model) for `steps` optimizer steps."""
    timings, folder = work / "grpo-timings.json", work / "grpo"
    rules = "{regex: 'Fair winds!\\s*$', weight: 0.5}, {max_words: 60, weight: 0.5}"  # as in the recipe
    rewards = f"grpo.rewards=[{{run: {reward}}}, {rules}]"
    script = str(Path(__file__).parent / "grpo_timed.py")
    run = posttrain(
        str(timings), "grpo", "smollm2-135m/grpo", *chain, "--set", rewards, "--set", f"train.max_steps={steps}",
        "--output-dir", str(folder), runner=(script,),
    )  # fmt: skip
    per_step = list(json.loads(timings.read_text(encoding="utf-8")).values())[1:]  # the first is warm-up
    keys = ("generation_s", "scoring_s", "optimisation_s")
    run |= {key: mean([s[key] for s in per_step]) for key in keys}
    run["s_per_step"] = round(sum(run[key] for key in keys), 2)
    logged = [e for e in json.loads((folder / "metrics.json").read_text())["log_history"] if "loss" in e][1:]
    run["completion_length"] = mean([e["completions/mean_length"] for e in logged])
    run["timed_steps"] = len(per_step)
    return run


if __name__ == "__main__":
    main()
