"""The precision decision table, on faked hardware; bf16 on a CPU trained where it is native, refused where not."""

import json

import pytest
import torch
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.errors import UserError
from posttrain.precision import Hardware, choose_precision, detect_hardware, keep_trainable_fp32, trainer_flags

A100 = Hardware("cuda", "A100", (8, 0))
T4 = Hardware("cuda", "Tesla T4", (7, 5))
CPU = Hardware("cpu", "CPU")


@pytest.mark.parametrize(
    ("requested", "hardware", "chosen"),
    [
        ("auto", A100, "bf16"),
        ("auto", T4, "fp16"),
        ("auto", CPU, "fp32"),
        ("fp32", T4, "fp32"),
        ("fp16", A100, "fp16"),
        ("bf16", A100, "bf16"),
        ("bf16", Hardware("cpu", "CPU", cpu_native_bf16=True), "bf16"),
    ],
)
def test_precision_choice(requested, hardware, chosen):
    assert choose_precision(requested, hardware) == chosen


@pytest.mark.parametrize(("requested", "hardware"), [("bf16", T4), ("bf16", CPU), ("fp16", CPU)])
def test_requests_the_hardware_cannot_honour_are_user_errors(requested, hardware):
    with pytest.raises(UserError, match="precision"):
        choose_precision(requested, hardware)


def test_trainer_flags_never_leave_trls_bf16_default_on():
    flags = {"bf16": False, "fp16": False, "use_cpu": True, "dataloader_pin_memory": False}
    assert trainer_flags("fp32", CPU) == flags
    assert trainer_flags("fp16", T4)["fp16"] is True
    assert trainer_flags("bf16", A100)["bf16"] is True


def test_trainable_weights_are_put_back_to_fp32():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    model.to(torch.bfloat16)
    keep_trainable_fp32(model)
    assert model[1].weight.dtype == torch.float32
    assert model[0].weight.dtype == torch.bfloat16  # frozen weights keep their dtype


def test_bf16_on_a_cpu_without_native_bf16_is_refused_before_loading(write_recipe, tmp_path, monkeypatch):
    from posttrain.methods import common

    monkeypatch.setattr(common, "detect_hardware", lambda: Hardware("cpu", "CPU", cpu_native_bf16=False))
    result = CliRunner().invoke(app, ["sft", str(write_recipe(model={"precision": "bf16"}))])
    assert result.exit_code == 2, result.output
    assert "model.precision: bf16" in result.output and "Use precision: auto" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # refused before a model was loaded or a run folder made


NATIVE_BF16 = detect_hardware().cpu_native_bf16 or detect_hardware().cuda_bf16


@pytest.mark.skipif(not NATIVE_BF16, reason="this machine has no native bf16 (AVX512-BF16 or a CUDA GPU >= 8.0)")
def test_bf16_trains_where_the_hardware_has_it(write_recipe, tmp_path):
    result = CliRunner().invoke(app, ["sft", str(write_recipe(model={"precision": "bf16"}))])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["precision"] == "bf16" and metrics["final_step"] == 2
    assert [entry["loss"] for entry in metrics["log_history"] if "loss" in entry]  # it trained, step by step
