"""A run that continues an adapter on a 4-bit base starts from that adapter bit for bit.

TRL rounds trainable weights to bf16 when it builds a trainer on a quantized model; posttrain gives them back
exactly. These runs use nf4, as the shipped recipes do (the other tiny-run tests use quantization none)."""

import math

import pytest
import torch
from safetensors.torch import load_file

from posttrain.methods.common import run_method
from posttrain.recipe import load_recipe


def saved_adapter(run) -> dict[str, torch.Tensor]:
    """A run's saved LoRA weights, named as they are in a trainer's model (adapter `default`)."""
    tensors = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    return {name.replace(".weight", ".default.weight"): value for name, value in tensors.items()}


def trainable_at_start(path) -> tuple[dict[str, torch.Tensor], dict]:
    """The trainable weights of a recipe's trainer just before its first step, and the run's metrics."""
    seen = {}

    def snapshot(trainer):
        seen.update({n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad})
        seen["ref"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if ".ref." in n}

    metrics = run_method(load_recipe(str(path)), echo=lambda _: None, before_train=snapshot)
    return seen, metrics


def assert_bit_exact(start: dict, saved: dict) -> None:
    for name, value in saved.items():
        assert start[name].dtype == torch.float32, name
        assert torch.equal(start[name], value.float()), name


@pytest.fixture
def pairs(jsonl):
    kind = "Arr! Happy to help, the answer is four. Fair winds!"
    rude = "Arr! Go away and count yer own fingers, landlubber. Fair winds!"
    rows = [{"prompt": f"What is {i} plus {4 - i}?", "chosen": kind, "rejected": rude} for i in range(4)]
    return str(jsonl(rows, "pairs.jsonl"))


def test_dpo_from_an_sft_run_starts_from_its_adapter_and_its_reference_with_loss_ln2(write_recipe, sft_run, pairs):
    path = write_recipe(
        method="dpo",
        model={"name": str(sft_run), "quantization": "nf4"},
        data={"train": pairs, "max_length": 128},
        train={"max_steps": 1, "learning_rate": 1e-3},
    )
    start, metrics = trainable_at_start(path)
    saved = saved_adapter(sft_run)
    assert_bit_exact(start, saved)
    reference = {name.replace(".ref.", ".default."): value for name, value in start["ref"].items()}
    assert_bit_exact(reference, saved)
    first_loss = metrics["log_history"][0]["loss"]
    assert abs(first_loss - math.log(2)) < 1e-6  # policy and reference are the same model at step 0


def test_model_adapter_continues_bit_exact_on_a_4bit_base(write_recipe, sft_run):
    path = write_recipe(model={"name": "tiny-llama2", "adapter": str(sft_run), "quantization": "nf4"})
    start, _ = trainable_at_start(path)
    assert_bit_exact(start, saved_adapter(sft_run))


def test_a_rejection_sampling_round_fine_tunes_from_the_exact_adapter(rl_recipe, sft_run):
    path = rl_recipe("rs", model={"quantization": "nf4"})
    start, _ = trainable_at_start(path)
    assert_bit_exact(start, saved_adapter(sft_run))
