"""FSDP-QLoRA's loading: under FSDP the 4-bit weights are packed in the compute dtype (bnb_4bit_quant_storage), so
FSDP can flatten and shard them with the rest of the model. Packed in uint8 beside fp32 or fp16 weights, FSDP2 runs
without an error and trains to a loss of 0 or NaN gradients (accelerate issue #3983): this test is the guard."""

import pytest
import torch


def four_bit_weights(model) -> list:
    import bitsandbytes as bnb

    return [module.weight for module in model.modules() if isinstance(module, bnb.nn.Linear4bit)]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_under_fsdp_the_4bit_weights_are_packed_in_the_compute_dtype(tiny_model, monkeypatch, precision):
    from posttrain.models.loading import load_base_model
    from posttrain.precision import torch_dtype

    alone = load_base_model(tiny_model, "nf4", True, precision)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what accelerate launch sets for the fsdp preset
    sharded = load_base_model(tiny_model, "nf4", True, precision)

    assert {w.dtype for w in four_bit_weights(alone)} == {torch.uint8}
    assert {w.dtype for w in four_bit_weights(sharded)} == {torch_dtype(precision)}
    # one dtype for every parameter of a layer: what FSDP needs to flatten a layer into one shard
    assert {p.dtype for p in sharded.model.layers[0].parameters()} == {torch_dtype(precision)}
    assert getattr(sharded, "hf_device_map", None) is None  # FSDP places the shards, not a device_map
    # the same 4-bit numbers, only packed in wider words: the model computes the same logits
    ids = torch.tensor([[1, 5, 9, 33, 70]])
    with torch.no_grad():
        assert torch.equal(alone(ids).logits, sharded(ids).logits)
