"""The precision decision table, on faked hardware."""

import pytest
import torch

from posttrain.errors import UserError
from posttrain.precision import Hardware, choose_precision, keep_trainable_fp32, trainer_flags

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
    assert trainer_flags("fp32", CPU) == {"bf16": False, "fp16": False, "dataloader_pin_memory": False}
    assert trainer_flags("fp16", T4)["fp16"] is True
    assert trainer_flags("bf16", A100)["bf16"] is True


def test_trainable_weights_are_put_back_to_fp32():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model[0].requires_grad_(False)
    model.to(torch.bfloat16)
    keep_trainable_fp32(model)
    assert model[1].weight.dtype == torch.float32
    assert model[0].weight.dtype == torch.bfloat16  # frozen weights keep their dtype
