"""PPO really learns: on smollm2-135m, with a reward run trained to prefer short answers, the mean reward over the
last steps is clearly above the first steps, the answers get shorter, and the KL to the reference stays bounded.

tiny-llama2 cannot show this: its random 64-wide network barely moves its output distribution under LoRA, so the
policy never finds what the reward prefers. smollm2 is a real instruction model that already ends its answers.
Alone on one thread: 5 min 41 s (8 reward steps, 6 PPO steps); the score went from -1.80 over the first three steps to
1.02 over the last three, the answers from 10.2 tokens to 3.9.
"""

import json
import re

import pytest
import yaml
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.data.sources import read_rows


def short_answer_pairs(path):
    """Preference pairs from the shipped pirate answers: the first two sentences beat the whole answer."""
    with path.open("w", encoding="utf-8") as handle:
        for row in read_rows("builtin:pirate_sft"):
            question, answer = (message["content"] for message in row.data["messages"][:2])
            sentences = re.split(r"(?<=[.!?]) ", answer)
            if len(sentences) >= 3:
                pair = {"prompt": question, "chosen": " ".join(sentences[:2]), "rejected": answer}
                handle.write(json.dumps(pair) + "\n")
    return path


def run(tmp_path, method: str, recipe: dict) -> dict:
    path = tmp_path / f"{method}.yaml"
    path.write_text(f"# posttrain {method} {path.name}\n" + yaml.safe_dump({"method": method} | recipe))
    result = CliRunner().invoke(app, [method, str(path)])
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / method / "metrics.json").read_text())


def mean(records: list[dict], key: str) -> float:
    return sum(r[key] for r in records) / len(records)


@pytest.mark.slow
def test_ppo_raises_the_reward_of_a_checkable_preference(tmp_path):
    model = {"name": "smollm2-135m", "quantization": "none"}
    reward = run(
        tmp_path,
        "reward",
        {
            "model": model,
            "data": {"train": str(short_answer_pairs(tmp_path / "short.jsonl")), "max_length": 128},
            "train": {"max_steps": 8, "learning_rate": 1e-3, "per_device_train_batch_size": 8, "report_to": "none"},
            "output_dir": str(tmp_path / "reward"),
        },
    )
    assert reward["train"]["train_loss"] < 0.5
    ppo = run(
        tmp_path,
        "ppo",
        {
            "model": model,  # no SFT run: the policy is a fresh LoRA and the reference is the bare instruct model
            "data": {"train": "builtin:pirate_sft", "max_length": 256},
            "ppo": {
                "reward": str(tmp_path / "reward"),
                "steps": 6,
                "activation_checkpointing": False,  # same gradients (test_ppo.py), half the optimisation time
                "batch_size": 8,
                "mini_batch_size": 4,
                "learning_rate": 2e-4,
                "max_new_tokens": 24,
                "eval_prompts": None,  # the held-out check has tests of its own (tests/test_rl_heldout.py)
            },
            "output_dir": str(tmp_path / "ppo"),
        },
    )
    first, last = ppo["steps"][:3], ppo["steps"][-3:]
    assert mean(last, "score") > mean(first, "score") + 1.0
    assert mean(last, "response_length") < mean(first, "response_length")
    assert max(r["kl"] for r in ppo["steps"]) < 5.0  # nats per response
