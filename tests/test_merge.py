"""`posttrain merge`: the adapter folded into full-precision base weights, a folder plain transformers loads."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from posttrain.cli import app

PROBE = "<s>[INST] What is the capital of Japan? [/INST] Arr! Tokyo."


def merge(run, output, *extra):
    return CliRunner().invoke(app, ["merge", str(run), "--output", str(output), *extra])


@pytest.fixture(scope="module")
def merged(sft_run, tmp_path_factory):
    output = tmp_path_factory.mktemp("merged") / "model"
    result = merge(sft_run, output)
    assert result.exit_code == 0, result.output
    return output, result.output


def logits_of(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(PROBE, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        return model(**batch).logits


def test_merged_logits_match_the_adapter_model(sft_run, merged):
    from transformers import AutoModelForCausalLM

    from posttrain.models.loading import load_run_model

    output, printed = merged
    assert "relative RMS difference" in printed and "tolerance 1e-04 for fp32" in printed
    adapter_model, tokenizer = load_run_model(str(sft_run))
    expected = logits_of(adapter_model, tokenizer)
    with adapter_model.disable_adapter():
        bare_base = logits_of(adapter_model, tokenizer)
    got = logits_of(AutoModelForCausalLM.from_pretrained(output), tokenizer)
    assert torch.allclose(got, expected, atol=1e-4)
    assert not torch.allclose(got, bare_base, atol=1e-2)  # the adapter is in there, and it matters


def test_merged_folder_loads_and_generates_without_peft_or_posttrain(merged):
    output, _ = merged
    code = f"""
import sys
sys.modules["peft"] = sys.modules["posttrain"] = None  # importing either would fail
from transformers import AutoModelForCausalLM, AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained({str(output)!r})
model = AutoModelForCausalLM.from_pretrained({str(output)!r})
chat = [{{"role": "user", "content": "Hi!"}}]
batch = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_dict=True, return_tensors="pt")
print(tokenizer.decode(model.generate(**batch, max_new_tokens=4)[0]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("<s>[INST] Hi! [/INST]")  # the run's chat template came along


def test_merged_weights_hold_no_lora_and_no_quantization(merged):
    output, _ = merged
    with safe_open(str(output / "model.safetensors"), framework="pt") as weights:
        names = list(weights.keys())
    assert "model.layers.0.self_attn.q_proj.weight" in names
    assert [name for name in names if "lora" in name or "base_model" in name] == []
    config = json.loads((output / "config.json").read_text())
    assert "quantization_config" not in config and config["dtype"] == "float32"  # tiny-llama2's own dtype
    generation = json.loads((output / "generation_config.json").read_text())
    assert generation["eos_token_id"] == 2 and generation["pad_token_id"] == 0  # </s> ends a turn, <unk> pads


def test_merge_in_fp16_saves_16_bit_weights(sft_run, tmp_path):
    result = merge(sft_run, tmp_path / "fp16", "--dtype", "fp16")
    assert result.exit_code == 0, result.output
    assert "tolerance 1e-02 for fp16" in result.output
    with safe_open(str(tmp_path / "fp16" / "model.safetensors"), framework="pt") as weights:
        assert weights.get_tensor("model.layers.0.mlp.down_proj.weight").dtype == torch.float16


def test_merge_refuses_a_folder_that_is_not_empty(sft_run, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = merge(sft_run, tmp_path / "taken")
    assert result.exit_code == 2 and "exists and is not an empty folder" in result.output
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_merging_a_reward_run_is_refused_with_what_to_do_instead(reward_run, tmp_path):
    result = merge(reward_run, tmp_path / "merged")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "is a reward run" in result.output and "posttrain eval accuracy" in result.output
    assert not (tmp_path / "merged").exists()
