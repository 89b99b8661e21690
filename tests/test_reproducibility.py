"""Same recipe, same seed: bit-identical adapter and metrics on CPU in fp32, for every training method and from a
fresh process (another hash seed, nothing left over in memory); another seed gives another adapter."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from posttrain.cli import app

PAIRS = "builtin:pirate_prefs"
TIMINGS = ("_runtime", "_per_second", "_s")  # wall-clock figures, the only part of metrics.json allowed to differ


def recipe_for(method: str, tmp_path, sft_run, reward_run, seed: int, name: str) -> dict:
    base = {"name": "tiny-llama2", "quantization": "none"}
    train = {"max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1, "learning_rate": 1e-2}
    train |= {"activation_checkpointing": False, "report_to": "none", "seed": seed}
    recipe = {"method": method, "model": base, "train": train, "output_dir": str(tmp_path / name)}
    if method in ("sft", "reward", "dpo", "orpo"):
        data = "builtin:pirate_sft" if method == "sft" else PAIRS
        return recipe | {"data": {"train": data, "max_length": 128}}
    prompts = {"train": "builtin:pirate_sft", "max_length": 96}
    sampling = {"reward": str(reward_run), "max_new_tokens": 6, "seed": seed}
    recipe |= {"model": base | {"name": str(sft_run)}, "data": prompts}
    if method == "rs":
        # keep_cut_off: tiny-llama2's answers rarely end within 6 tokens
        return recipe | {
            "rs": sampling | {"iterations": 2, "samples_per_prompt": 2, "batch_size": 4, "keep_cut_off": True}
        }
    del recipe["train"]
    return recipe | {"ppo": sampling | {"steps": 2, "batch_size": 4, "mini_batch_size": 2, "save_steps": 1}}


def train(method: str, tmp_path, sft_run, reward_run, seed: int, name: str, fresh_process: bool = False):
    """Run `posttrain METHOD`; return the adapter's tensors and metrics.json without timings."""
    recipe = recipe_for(method, tmp_path, sft_run, reward_run, seed, name)
    if method == "rs":
        recipe["data"]["train"] = str(tmp_path / "prompts.jsonl")
        rows = [{"prompt": f"Tell me about ship number {i}."} for i in range(4)]
        (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"# posttrain {method} {path.name}\n" + yaml.safe_dump(recipe))
    if fresh_process:
        env = os.environ | {"PYTHONHASHSEED": "123", "OMP_NUM_THREADS": str(torch_threads())}
        done = subprocess.run([sys.executable, "-m", "posttrain", method, str(path)], env=env, capture_output=True)
        assert done.returncode == 0, done.stderr.decode()[-3000:]
    else:
        result = CliRunner().invoke(app, [method, str(path)])
        assert result.exit_code == 0, result.output
    run = tmp_path / name
    metrics = json.loads((run / "metrics.json").read_text())
    return load_file(str(run / "adapter" / "adapter_model.safetensors")), without_timings(metrics)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()  # the same thread count: a different one may change float sums' order


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if not k.endswith(TIMINGS)}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


@pytest.mark.parametrize("method", ["sft", "reward", "dpo", "orpo", "rs", "ppo"])
def test_the_same_seed_gives_the_same_adapter_and_metrics_and_another_seed_does_not(
    method, tmp_path, sft_run, reward_run
):
    first, first_metrics = train(method, tmp_path, sft_run, reward_run, seed=7, name="first")
    again, again_metrics = train(method, tmp_path, sft_run, reward_run, seed=7, name="again")
    other, _ = train(method, tmp_path, sft_run, reward_run, seed=8, name="other")
    assert first.keys() == again.keys() == other.keys()
    assert [k for k in first if not first[k].equal(again[k])] == []  # bit-identical, not merely close
    assert first_metrics == again_metrics  # loss history included, to the last bit of every float
    assert any(not first[k].equal(other[k]) for k in first)


def test_a_fresh_process_reproduces_the_adapter_and_metrics_bit_for_bit(tmp_path):
    here, here_metrics = train("sft", tmp_path, None, None, seed=7, name="here")
    fresh, fresh_metrics = train("sft", tmp_path, None, None, seed=7, name="fresh", fresh_process=True)
    assert [k for k in here if not here[k].equal(fresh[k])] == []
    assert here_metrics == fresh_metrics
