"""FSDP-QLoRA: under FSDP the 4-bit weights are packed in the compute dtype (bnb_4bit_quant_storage), so FSDP2 shards
them with the rest of the model. Packed in uint8, accelerate 1.16 leaves them out of the sharding (every process holds
them whole: no memory saved; older versions trained them to a loss of 0 or NaN gradients, accelerate issue #3983).

Two FSDP2 processes on the CPU (POSTTRAIN_FSDP_ON_CPU=1) train the nf4 tiny-llama2: each holds half of every 4-bit and
LoRA weight, the losses and adapter are those of one process with the same global batch, and the run saves one whole
adapter that reloads, merges and resumes; DPO continues it under FSDP, and a reward model trains under FSDP. The plan's
memory of one GPU of several is checked against the sharding arithmetic."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from posttrain.launch import fsdp_supported


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


# ---------------------------------------------------------------- FSDP2 in two CPU processes (POSTTRAIN_FSDP_ON_CPU=1)

# Put first on the launched processes' path: after accelerate's fully_shard, each process writes what its model's
# 4-bit and LoRA weights became (a DTensor or not, the dtype, how many of their numbers this process holds).
SHARD_PROBE = """
import os

if "RANK" in os.environ:  # the training processes, not the launcher
    import json
    from pathlib import Path

    import accelerate.accelerator as accelerator_module

    prepare = accelerator_module.fsdp2_prepare_model

    def describe(weight):
        from torch.distributed.tensor import DTensor

        local = weight.to_local() if isinstance(weight, DTensor) else weight
        return {"sharded": isinstance(weight, DTensor), "dtype": str(weight.dtype), "held": local.numel(),
                "whole": weight.numel()}

    def prepare_and_record(accelerator, model):
        model = prepare(accelerator, model)
        weights = {name: describe(module.weight) for name, module in model.named_modules()
                   if type(module).__module__.startswith("bitsandbytes")}
        lora = {name: describe(p) for name, p in model.named_parameters() if "lora_" in name}
        record = Path(os.environ["SHARD_PROBE"]) / f"rank-{os.environ['RANK']}.json"
        record.write_text(json.dumps({"4bit": weights, "lora": lora}))
        return model

    accelerator_module.fsdp2_prepare_model = prepare_and_record
"""
# LoRA dropout draws its masks from each process's own random stream, so two processes would not drop what one
# process drops; without it the two runs compute the same numbers in another order. The learning rate is high so
# that a wrong gradient (one process's only, or not averaged) shows in the losses of steps 3 and 4.
TRAIN = {"learning_rate": 1e-2, "logging_steps": 1, "activation_checkpointing": False, "report_to": "none"}
# Measured: the losses of the two runs differ by at most 5e-7 (7e-8 relative), the float32 rounding of sums taken
# in another order (each process sums its row, the gradients are averaged by a reduce-scatter); 1e-5 leaves room for
# other CPUs' kernels and is far below what a wrong gradient does (0.04 from step 2 to 3 at this learning rate).
RELATIVE_TOLERANCE = 1e-5
# The adapters are compared by each weight's norm: Adam divides by the root of its running squared gradient, so for
# the few numbers whose gradient is close to 0 a rounding-sized change moves the update by up to the learning rate
# (measured: 4 of 34,816 numbers differ by more than 1e-6, the worst by 1.7e-4; the worst weight by 7.5e-5 of its
# norm). A wrong update moves a weight by far more: lora_B starts at 0, so by all of its norm.
WEIGHT_TOLERANCE = 1e-3


def assert_same_adapter(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys()
    for name, weight in got.items():
        assert (weight - expected[name]).norm() <= WEIGHT_TOLERANCE * expected[name].norm(), name


def fsdp_recipe(folder: Path, method: str = "sft", processes: int = 2, **sections) -> Path:
    """A recipe of 3 steps of 2 rows each (1 per process in two), saved every step, on the nf4 tiny-llama2."""
    recipe = {
        "method": method,
        "model": {"name": "tiny-llama2", "quantization": "nf4"},
        "lora": {"dropout": 0.0},
        "data": {"train": "builtin:pirate_sft", "max_length": 192},
        "train": TRAIN | {"max_steps": 3, "per_device_train_batch_size": 2 // processes, "save_steps": 1},
        "output_dir": str(folder / method),
    }
    for key, value in sections.items():
        recipe[key] = recipe[key] | value if isinstance(recipe.get(key), dict) else value
    path = folder / f"{method}-{processes}.yaml"
    path.write_text(f"# posttrain {method} {path.name}\n" + yaml.safe_dump(recipe), encoding="utf-8")
    return path


def train_under_fsdp(method: str, recipe: Path, *options: str, probe: Path | None = None) -> str:
    env = dict(os.environ, POSTTRAIN_FSDP_ON_CPU="1", OMP_NUM_THREADS="1")
    if probe is not None:
        probe.mkdir()
        (probe / "sitecustomize.py").write_text(SHARD_PROBE)
        env |= {"PYTHONPATH": str(probe), "SHARD_PROBE": str(probe)}
    command = [sys.executable, "-m", "posttrain", method, str(recipe), "--accelerate-config", "fsdp"]
    done = subprocess.run(command + ["--num-processes", "2", *options], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def losses(run: Path) -> list[float]:
    metrics = json.loads((run / "metrics.json").read_text())
    return [entry["loss"] for entry in metrics["log_history"] if "loss" in entry]


def adapter_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "adapter" / "adapter_model.safetensors")


# Older accelerate versions are refused before launching (launch.fsdp_supported; make test-min runs the floors).
needs_fsdp_accelerate = pytest.mark.skipif(
    not fsdp_supported(),
    reason="the fsdp preset needs accelerate 1.16 or later (older ones are refused: posttrain.launch.fsdp_supported)",
)


@pytest.fixture(scope="module")
def fsdp_sft(tmp_path_factory) -> Path:
    """An nf4 SFT run trained by two FSDP2 processes on the CPU, with what fully_shard made of its weights."""
    folder = tmp_path_factory.mktemp("fsdp")
    output = train_under_fsdp("sft", fsdp_recipe(folder), probe=folder / "probe")
    assert output.count("done: run folder") == 1
    return folder / "sft"


def test_fsdp_without_a_gpu_needs_the_opt_in(monkeypatch):
    from posttrain import fsdp_cpu, launch
    from posttrain.errors import UserError

    for name in (launch.LAUNCHED, "LOCAL_RANK", fsdp_cpu.OPT_IN):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=f"to test FSDP on CPU processes: {fsdp_cpu.OPT_IN}=1"):
        launch.plan_launch(2, "fsdp", method="sft")
    monkeypatch.setenv(fsdp_cpu.OPT_IN, "1")
    monkeypatch.setattr(launch, "fsdp_supported", lambda: False)  # an accelerate older than FSDP_ACCELERATE
    with pytest.raises(UserError, match=f"needs accelerate {launch.FSDP_ACCELERATE} or later"):
        launch.plan_launch(2, "fsdp", method="sft")
    monkeypatch.setattr(launch, "fsdp_supported", lambda: True)
    planned = launch.plan_launch(2, "fsdp", method="sft")
    assert planned.cpu and planned.config_file.name == "fsdp.yaml"
    with pytest.raises(UserError, match="rs samples with a model it loads outside the trainer"):
        launch.plan_launch(2, "fsdp", method="rs")  # still refused before anything loads


@needs_fsdp_accelerate
def test_two_fsdp_processes_each_hold_half_of_every_4bit_and_lora_weight(fsdp_sft):
    probe = fsdp_sft.parent / "probe"
    for rank in (0, 1):
        shards = json.loads((probe / f"rank-{rank}.json").read_text())
        assert len(shards["4bit"]) == 2 * 7 and len(shards["lora"]) == 2 * 2 * 7  # 2 layers, 7 linears each
        for weight in [*shards["4bit"].values(), *shards["lora"].values()]:
            # packed in the compute dtype, so fully_shard splits them (uint8-packed ones it would leave whole)
            assert weight["sharded"] and weight["dtype"] == "torch.float32", weight
            assert weight["held"] <= -(-weight["whole"] // 2), weight


@needs_fsdp_accelerate
def test_fsdp_trains_what_one_process_trains_with_the_same_global_batch(fsdp_sft, tmp_path):
    from posttrain.methods.common import run_method
    from posttrain.recipe import load_recipe

    run_method(load_recipe(str(fsdp_recipe(tmp_path, processes=1))), echo=lambda _: None)
    one, two = losses(tmp_path / "sft"), losses(fsdp_sft)
    assert len(two) == 3 and all(math.isfinite(loss) and loss > 0 for loss in two)
    assert two == pytest.approx(one, rel=RELATIVE_TOLERANCE)
    assert_same_adapter(adapter_weights(fsdp_sft), adapter_weights(tmp_path / "sft"))


@needs_fsdp_accelerate
def test_the_fsdp_run_saves_one_whole_adapter_that_reloads_equal(fsdp_sft):
    from posttrain.models.loading import load_run_model

    assert [
        p.relative_to(fsdp_sft) for p in fsdp_sft.rglob("adapter_model.safetensors") if "checkpoints" not in p.parts
    ] == [Path("adapter/adapter_model.safetensors")]
    # FSDP's own checkpoint (what --resume reads), and one RNG state per process
    assert (fsdp_sft / "checkpoints" / "checkpoint-2" / "pytorch_model_fsdp.bin").is_file()
    assert {p.name for p in (fsdp_sft / "checkpoints" / "checkpoint-2").glob("rng_state_*")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }
    saved = adapter_weights(fsdp_sft)
    model, _ = load_run_model(str(fsdp_sft))
    reloaded = {name: p for name, p in model.named_parameters() if "lora_" in name}
    assert len(reloaded) == len(saved) == 2 * 2 * 7
    for name, weight in reloaded.items():
        assert torch.equal(weight, saved[name.replace(".default", "")])  # the whole weight, not one shard
    assert all(weight.abs().sum() > 0 for name, weight in saved.items() if "lora_B" in name)  # it trained


@needs_fsdp_accelerate
def test_the_fsdp_run_merges(fsdp_sft, tmp_path):
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from posttrain.cli import app
    from posttrain.models.loading import load_run_model

    result = CliRunner().invoke(app, ["merge", str(fsdp_sft), "--output", str(tmp_path / "merged")])
    assert result.exit_code == 0, result.output
    model, tokenizer = load_run_model(str(fsdp_sft), quantization="none")  # merge's base is the unquantized one
    ids = tokenizer("<s>[INST] Hello? [/INST] Arr!", return_tensors="pt", add_special_tokens=False).input_ids
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, model(ids).logits, atol=1e-4, rtol=0)


@needs_fsdp_accelerate
def test_the_fsdp_run_resumes_from_its_checkpoint_and_ends_where_it_ended(fsdp_sft, tmp_path):
    import shutil

    run = tmp_path / "sft"
    shutil.copytree(fsdp_sft, run)
    # As if the processes had died after the last step (which has no checkpoint), before its adapter and metrics:
    shutil.rmtree(run / "adapter")
    (run / "metrics.json").unlink()
    recipe = fsdp_recipe(tmp_path)
    output = train_under_fsdp("sft", recipe, "--resume")
    assert "resume: continuing after step 2" in output
    assert losses(run) == losses(fsdp_sft)[:2] + [pytest.approx(losses(fsdp_sft)[2], rel=RELATIVE_TOLERANCE)]
    assert_same_adapter(adapter_weights(run), adapter_weights(fsdp_sft))


@needs_fsdp_accelerate
def test_dpo_under_fsdp_continues_the_fsdp_run_against_its_starting_adapter(fsdp_sft, tmp_path):
    recipe = fsdp_recipe(
        tmp_path,
        "dpo",
        model={"name": str(fsdp_sft)},
        data={"train": "builtin:pirate_prefs", "max_length": 128},
        train={"learning_rate": 1e-3},
    )
    train_under_fsdp("dpo", recipe)
    metrics = json.loads((tmp_path / "dpo" / "metrics.json").read_text())
    assert metrics["reference_model"] == f"the starting adapter of {fsdp_sft}"
    first, *rest = losses(tmp_path / "dpo")
    assert first == pytest.approx(math.log(2), abs=1e-6)  # the policy starts as its reference: the sharded one
    assert all(math.isfinite(loss) and loss > 0 for loss in rest) and rest[-1] != pytest.approx(math.log(2), abs=1e-4)
    assert not (tmp_path / "dpo" / "adapter" / "ref").exists()


@needs_fsdp_accelerate
def test_a_reward_model_trains_under_fsdp_with_its_score_head(tmp_path, reward_pairs):
    recipe = fsdp_recipe(tmp_path, "reward", data={"train": str(reward_pairs), "max_length": 128})
    train_under_fsdp("reward", recipe)
    found = losses(tmp_path / "reward")
    assert len(found) == 3 and all(math.isfinite(loss) and loss > 0 for loss in found)
    assert any("score" in name for name in adapter_weights(tmp_path / "reward"))
