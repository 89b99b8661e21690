"""Pinned losses: each method's first steps on tiny-llama2, compared with stored reference values.

Like TRL's invariant tests. tiny-llama2 builds identically every time and every run here is seeded, full precision
on the CPU, so the same code gives the same numbers. A change to the math (a loss, a mask, a default, the data a
step sees) fails here loudly, with the method, step and key, even when every behavioural test still passes.

When a change is meant to move these numbers, regenerate the references and commit them with the change:

    POSTTRAIN_UPDATE_REFERENCES=1 pytest tests/test_pinned_losses.py

Only the CLI and the run folders are used (metrics.json), so the test survives a reshuffle of posttrain's modules.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from posttrain.cli import app

REFERENCES = Path(__file__).parent / "references" / "pinned_losses.json"
UPDATE = os.environ.get("POSTTRAIN_UPDATE_REFERENCES") == "1"
HOW_TO_UPDATE = "POSTTRAIN_UPDATE_REFERENCES=1 pytest tests/test_pinned_losses.py"
# Tight enough that any change to the math shows, loose enough for the reduction order of another CPU's kernels.
REL, ABS = 1e-4, 1e-6
# Bookkeeping and timing in TRL's step logs, not results of the math.
NOT_PINNED = {"learning_rate", "epoch", "num_tokens", "step_time"}
PPO_KEYS = ("policy_loss", "value_loss", "score", "kl")
RS_KEYS = ("train_loss", "mean_score", "best_score")
TRAIN = {
    "max_steps": 3,
    "per_device_train_batch_size": 2,
    "learning_rate": 1e-2,  # large, so steps 2 and 3 show what step 1's update did
    "logging_steps": 1,
    "activation_checkpointing": False,
    "save_strategy": "no",
    "report_to": "none",
}


def run(root: Path, method: str, model: str, data: str, **sections) -> dict:
    """Train `method` through the CLI into root/method and return its metrics.json."""
    recipe = {
        "method": method,
        "model": {"name": model, "quantization": "none"},
        "data": {"train": data, "max_length": 192},
        "output_dir": str(root / method),
    } | sections
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{method}.yaml"
    path.write_text(f"# posttrain {method} {path.name}\n" + yaml.safe_dump(recipe), encoding="utf-8")
    result = CliRunner().invoke(app, [method, str(path), "--overwrite"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return json.loads((root / method / "metrics.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One CPU thread: the numbers then do not hang on the machine's core count (a threaded sum's order does), and
    tiny-llama2, which gains nothing from threads, does not stall on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pinned")


@pytest.fixture(scope="module")
def sft_metrics(root) -> dict:
    """The SFT run: pinned itself, and the start of dpo, kto, rs, ppo, gatt and distill."""
    return run(root, "sft", "tiny-llama2", "builtin:pirate_sft", train=TRAIN)


@pytest.fixture(scope="module")
def reward_metrics(root) -> dict:
    """The reward run: pinned itself, and the reward model of rs, ppo, gatt and distill."""
    return run(root, "reward", "tiny-llama2", "builtin:pirate_prefs", train=TRAIN | {"learning_rate": 1e-3})


def prompts(root: Path) -> str:
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"Tell me about ship number {i}."}) + "\n" for i in range(4)))
    return str(path)


# ---------------------------------------------------------------- what is pinned, and the comparison


def trl_steps(metrics: dict) -> list[dict]:
    """Each logged training step of a TRL method: its step and every number in it but the bookkeeping."""
    steps = [entry for entry in metrics["log_history"] if "loss" in entry]
    return [{k: v for k, v in entry.items() if k not in NOT_PINNED and isinstance(v, int | float)} for entry in steps]


def rs_rounds(metrics: dict) -> list[dict]:
    return [{"round": r["round"]} | {k: r[k] for k in RS_KEYS} for r in metrics["rounds"]]


def ppo_steps(metrics: dict) -> list[dict]:
    return [{"step": s["step"]} | {k: s[k] for k in PPO_KEYS} for s in metrics["steps"]]


def check_pinned(method: str, measured: list[dict]) -> None:
    """Compare with the stored reference, or store these values when updating."""
    references = json.loads(REFERENCES.read_text(encoding="utf-8")) if REFERENCES.exists() else {}
    if UPDATE:
        references[method] = measured
        REFERENCES.parent.mkdir(exist_ok=True)
        REFERENCES.write_text(json.dumps(references, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return
    assert method in references, f"no reference for {method}; create it with: {HOW_TO_UPDATE}"
    expected = references[method]
    assert len(measured) == len(expected), f"{method}: {len(measured)} records, reference has {len(expected)}"
    for got, want in zip(measured, expected, strict=True):
        for key, value in want.items():
            where = f"{method} step {want['step']}: {key}" if "step" in want else f"rs round {want['round']}: {key}"
            assert key in got, f"{where} is no longer reported"
            assert got[key] == pytest.approx(value, rel=REL, abs=ABS), (
                f"{where} is {got[key]!r}, reference {value!r}. If the change is intended: {HOW_TO_UPDATE}"
            )


# ---------------------------------------------------------------- one test per method


def test_sft_losses_are_pinned(sft_metrics):
    check_pinned("sft", trl_steps(sft_metrics))


def test_reward_losses_are_pinned(reward_metrics):
    check_pinned("reward", trl_steps(reward_metrics))


def test_dpo_losses_are_pinned(root, sft_metrics):
    check_pinned("dpo", trl_steps(run(root, "dpo", str(root / "sft"), "builtin:pirate_prefs", train=TRAIN)))


def test_orpo_losses_are_pinned(root):
    check_pinned("orpo", trl_steps(run(root, "orpo", "tiny-llama2", "builtin:pirate_prefs", train=TRAIN)))


def test_rs_rounds_are_pinned(root, sft_metrics, reward_metrics):
    rs = {"reward": str(root / "reward"), "iterations": 2, "samples_per_prompt": 2, "max_new_tokens": 8}
    rs["keep_cut_off"] = True  # tiny-llama2's answers rarely end within 8 tokens
    metrics = run(root, "rs", str(root / "sft"), prompts(root), rs=rs, train=TRAIN | {"max_steps": 2})
    check_pinned("rs", rs_rounds(metrics))


def test_ppo_steps_are_pinned(root, sft_metrics, reward_metrics):
    ppo = {"reward": str(root / "reward"), "steps": 3, "batch_size": 4, "mini_batch_size": 2, "max_new_tokens": 8}
    metrics = run(root, "ppo", str(root / "sft"), "builtin:pirate_sft", ppo=ppo | {"learning_rate": 1e-3})
    check_pinned("ppo", ppo_steps(metrics))


def test_kto_losses_are_pinned(root, sft_metrics):
    check_pinned("kto", trl_steps(run(root, "kto", str(root / "sft"), "builtin:pirate_feedback", train=TRAIN)))


def test_grpo_losses_are_pinned(root):
    grpo = {"rewards": [{"max_words": 3}]}
    train = TRAIN | {"per_device_train_batch_size": 4, "num_generations": 4, "max_completion_length": 8}
    check_pinned("grpo", trl_steps(run(root, "grpo", "tiny-llama2", "builtin:arithmetic", grpo=grpo, train=train)))


def test_gatt_losses_are_pinned(root, sft_metrics, reward_metrics):
    gatt = {"reward": str(root / "reward"), "samples_per_dialogue": 2, "max_new_tokens": 8, "max_turns": 2}
    gatt |= {"keep_cut_off": True}
    check_pinned(
        "gatt", trl_steps(run(root, "gatt", str(root / "sft"), "builtin:gatt_dialogues", gatt=gatt, train=TRAIN))
    )


def test_distill_losses_are_pinned(root, sft_metrics, reward_metrics):
    distill = {"reward": str(root / "reward"), "max_new_tokens": 8, "keep": "all", "keep_cut_off": True}
    metrics = run(root, "distill", str(root / "sft"), "builtin:safety_prompts", distill=distill, train=TRAIN)
    check_pinned("distill", trl_steps(metrics))


def test_a_second_run_gives_identical_numbers(root, sft_metrics):
    """Pinning needs determinism: the same recipe, run again in this process, repeats every number exactly."""
    again = run(root / "again", "sft", "tiny-llama2", "builtin:pirate_sft", train=TRAIN)
    assert trl_steps(again) == trl_steps(sft_metrics)
