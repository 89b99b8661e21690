"""A GPU recipe (the shipped Llama 2 recipes ask for fp16) checked on a machine without a GPU: a dry run checks
everything else as on a T4; a real run still refuses."""

import pytest
from typer.testing import CliRunner

from posttrain.cli import app

runner = CliRunner()
# The shipped T4 recipe with a model and data that need no hub; its precision, quantization, LoRA and train: as shipped.
OFFLINE = ["--set", "model.name=tiny-llama2", "--set", "data.train=builtin:pirate_sft"]


@pytest.fixture(autouse=True)
def without_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("checks what a machine without a CUDA GPU does")


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_dry_run_of_a_t4_recipe_on_cpu_checks_it_as_on_a_t4(tmp_path):
    result = invoke("sft", "llama2-7b/sft-qlora-t4", *OFFLINE, "--output-dir", tmp_path / "run", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "hardware    NVIDIA T4 -> precision fp16, quantization nf4 (4-bit)" in result.output
    assert "checked as on NVIDIA T4: this machine has no CUDA GPU" in result.output
    assert "--gpu t4` predicts its GPU memory" in result.output
    assert not (tmp_path / "run").exists()


def test_real_run_of_a_t4_recipe_on_cpu_is_refused(tmp_path):
    result = invoke("sft", "llama2-7b/sft-qlora-t4", *OFFLINE, "--output-dir", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "model.precision: fp16 needs a CUDA GPU" in result.output
    assert not (tmp_path / "run").exists()


def test_dry_run_of_the_shipped_t4_recipe_offline_stops_at_the_hub_not_at_precision(tmp_path):
    result = invoke("sft", "llama2-7b/sft-qlora-t4", "--output-dir", tmp_path / "run", "--dry-run")
    # tests run offline (HF_HUB_OFFLINE=1): meta-llama's tokenizer is out of reach, as on a laptop without a token
    assert result.exit_code == 2, result.output
    assert "cannot load meta-llama/Llama-2-7b-hf" in result.output and "hub cannot be reached" in result.output
    assert "fp16 needs a CUDA GPU" not in result.output
