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


# ---------------------------------------------------------------- `posttrain plan` for one GPU of several


def plans_13b_sft(*gpus):
    """The training phase of the 13B T4 recipe on one GPU, and for one GPU of each (count, preset) in gpus."""
    from posttrain.plan.estimate import Models, estimate, per_gpu
    from posttrain.recipe import load_recipe

    recipe = load_recipe("llama2-13b/sft-qlora-t4")
    models = Models.of(recipe)
    alone = estimate(recipe, models, "fp16")
    spread = [per_gpu(alone, recipe, models, "fp16", count, preset) for count, preset in gpus]
    return [{t.name: t.bytes for t in e.phases[0].terms} for e in [alone, *spread]]


def test_fsdp_shards_the_packed_weights_adapters_and_optimizer_and_keeps_the_rest_whole():
    alone, two, four = plans_13b_sft((2, "fsdp"), (4, "fsdp"))
    # Llama 2 13B: hidden 5120, intermediate 13824, 40 layers; 4-bit values two to a byte
    layer = (4 * 5120 * 5120 + 3 * 5120 * 13824) // 2
    decoder = 40 * layer
    # embeddings, LM head and norms (2 per layer and a final one): fp32 on one GPU (prepared for k-bit training),
    # the compute dtype under FSDP; RoPE's two fp32 frequency tables; what is left are the quantization constants
    dense, rotary = 2 * 32000 * 5120 + 81 * 5120, 2 * 64 * 4
    constants = alone["base weights (4-bit)"] - decoder - 4 * dense - rotary
    for gpus, plan in ((2, two), (4, four)):
        assert plan["base weights (4-bit)"] == -(-decoder // gpus) + constants + 2 * dense + rotary
        assert plan["gathered layers"] == 2 * layer
        for name in ("LoRA weights", "gradients + optimizer"):
            assert plan[name] == -(-alone[name] // gpus)
        assert plan["activations"] == alone["activations"] and plan["logits"] == alone["logits"]  # own micro-batch
    assert "LM head cast" in alone and "LM head cast" not in two  # no fp32 LM head to cast under sharded QLoRA


def test_ddp_holds_everything_on_every_gpu_plus_a_bucket_of_gradients():
    alone, ddp = plans_13b_sft((2, "ddp"))
    assert {name: size for name, size in ddp.items() if name != "DDP gradient buckets"} == alone
    assert ddp["DDP gradient buckets"] == alone["LoRA weights"]  # fp32 gradients, one per LoRA weight


def test_zero2_splits_only_gradients_and_optimizer_state():
    alone, zero2 = plans_13b_sft((2, "zero2"))
    assert zero2["gradients + optimizer"] == -(-alone["gradients + optimizer"] // 2)
    assert {n: s for n, s in zero2.items() if n != "gradients + optimizer"} == {
        n: s for n, s in alone.items() if n != "gradients + optimizer"
    }


def test_a_sampling_method_is_refused_a_sharded_launch_before_anything_loads(monkeypatch):
    from posttrain import launch
    from posttrain.errors import UserError

    monkeypatch.delenv(launch.LAUNCHED, raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(UserError, match="rs samples with a model it loads outside the trainer"):
        launch.plan_launch(2, "fsdp", method="rs")


def test_plan_prints_the_memory_of_one_gpu_of_two_and_refuses_what_cannot_shard():
    from typer.testing import CliRunner

    from posttrain.cli import app

    runner, two_fsdp = CliRunner(), ["--num-processes", "2", "--accelerate-config", "fsdp"]
    fsdp = runner.invoke(app, ["plan", "llama2-13b/sft-qlora-2xt4", *two_fsdp])
    assert fsdp.exit_code == 0, fsdp.output
    assert "memory of each of 2 GPUs under fsdp" in fsdp.output and "gathered layers" in fsdp.output
    refused = runner.invoke(app, ["plan", "llama2-7b/rs-qlora-t4", *two_fsdp])
    assert refused.exit_code == 2 and "rs cannot run sharded; plan it with ddp" in refused.output
