"""posttrain plan: the memory terms against what the loaded models really hold, the verdict, the advice, and
the shipped recipes against the GPUs they are written for."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.models.loading import add_lora, load_base_model, resolve_model
from posttrain.plan.estimate import Models, estimate
from posttrain.plan.fit import warn_if_too_big
from posttrain.plan.memory import ModelShape, Precision, base_weight_bytes, layer_activation_bytes, lora_parameters
from posttrain.recipe import load_recipe, shipped_recipes
from posttrain.sections import LoraSection


def shape_of(ref) -> ModelShape:
    return ModelShape.from_config(json.loads((Path(resolve_model(ref).base) / "config.json").read_text()))


def quant_state_bytes(model) -> int:
    """What bitsandbytes keeps beside each 4-bit weight (absmax, codes), which get_memory_footprint leaves out."""
    storages = {}
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is None:
            continue
        tensors = [state.absmax, state.code]
        if state.nested:
            tensors += [state.offset, state.state2.absmax, state.state2.code]
        for tensor in tensors:
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize(
    ("model", "double_quant"), [("tiny-llama2", True), ("tiny-llama2", False), ("smollm2-135m", True)]
)
def test_weight_terms_equal_the_loaded_4bit_footprint(model, double_quant):
    loaded = load_base_model(resolve_model(model), "nf4", double_quant, "fp32")
    measured = loaded.get_memory_footprint() + quant_state_bytes(loaded)
    assert base_weight_bytes(shape_of(model), "nf4", double_quant, dense_bytes=4) == measured


@pytest.mark.parametrize("model", ["tiny-llama2", "smollm2-135m"])
def test_reward_model_weights_equal_the_loaded_footprint(model):
    loaded = load_base_model(resolve_model(model), "nf4", True, "fp32", task_type="SEQ_CLS")
    measured = loaded.get_memory_footprint() + quant_state_bytes(loaded)
    assert base_weight_bytes(shape_of(model), "nf4", True, dense_bytes=4, score_head=True) == measured


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"]])
def test_lora_term_equals_the_trainable_parameter_count(targets):
    lora = LoraSection(r=8, target_modules=targets)
    model = add_lora(load_base_model(resolve_model("smollm2-135m"), "nf4", True, "fp32"), lora, None)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameters(shape_of("smollm2-135m"), 8, targets) == trainable


def saved_activation_bytes(model, tokens: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward during one forward pass (parameters excluded)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            kept[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=tokens)
    return sum(kept.values())


@pytest.mark.parametrize("training", [True, False], ids=["dropout", "eval-mode"])
def test_activation_term_matches_what_autograd_keeps(training):
    """On smollm2-135m's 30 layers; the per-layer formula leaves out the first layer's few tensors that need no
    gradient and the final norm's input, which matter only in a model as shallow as tiny-llama2."""
    model = "smollm2-135m"
    lora = LoraSection(r=16, dropout=0.05)
    peft_model = add_lora(load_base_model(resolve_model(model), "nf4", True, "fp32"), lora, None)
    peft_model.train(training)
    shape, batch, length = shape_of(model), 2, 96
    tokens = torch.randint(3, shape.vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    measured = saved_activation_bytes(peft_model, tokens)
    per_layer = layer_activation_bytes(
        shape, 16, shape.lora_targets("all-linear"), Precision.of("fp32", True, cuda=False), dropout=training
    )
    predicted = batch * length * shape.layers * per_layer
    assert predicted == pytest.approx(measured, rel=0.03)


# ---------------------------------------------------------------- the command


def plan(*args):
    return CliRunner().invoke(app, ["plan", *args])


def test_plan_shows_each_term_and_a_verdict_offline():
    result = plan("llama2-7b/sft-qlora-t4", "--gpu", "t4")
    assert result.exit_code == 0, result.output
    for term in ("base weights (4-bit)", "LoRA weights", "gradients + optimizer", "activations", "logits"):
        assert term in result.output
    assert "without checkpointing" in result.output and "fits on NVIDIA T4" in result.output


def test_verdict_flips_when_max_length_grows_past_the_limit():
    fits = plan("llama2-7b/sft-qlora-t4", "--set", "data.max_length=2048")
    too_long = plan("llama2-7b/sft-qlora-t4", "--set", "data.max_length=16384")
    assert "verdict     fits" in fits.output
    assert "does not fit on NVIDIA T4" in too_long.output and too_long.exit_code == 1
    advice = too_long.output.split("each change alone, largest saving first:")[1].splitlines()[1:]
    savings = [float(line.split("saves ")[1].split(" GiB")[0]) for line in advice]
    assert savings == sorted(savings, reverse=True) and any("data.max_length=" in line for line in advice)


def test_ppo_plan_has_generation_scoring_and_optimisation():
    result = plan("llama2-7b/ppo-qlora-t4")
    for text in ("generation", "KV cache", "scoring", "optimisation", "value adapter + head", "reward adapter"):
        assert text in result.output
    without = plan("llama2-7b/ppo-qlora-t4", "--set", "ppo.activation_checkpointing=false").output
    assert "does not fit" in without and "optimisation (the peak)" in without
    advice = without.split("largest saving first")[1].splitlines()
    assert advice[1].startswith("  --set ppo.activation_checkpointing=true")


def test_ppo_ptx_adds_a_policy_pass_and_its_logits_to_the_optimisation():
    def optimisation(*settings: str) -> dict[str, int]:
        recipe = load_recipe("llama2-7b/ppo-qlora-t4", ["ppo.activation_checkpointing=false", *settings])
        phase = estimate(recipe, Models.of(recipe), "fp16").phases[2]
        assert phase.name == "optimisation"
        return {term.name: term.bytes for term in phase.terms}

    without = optimisation()
    ptx = optimisation("ppo.ptx_coef=1.0", "ppo.ptx_data=builtin:pirate_sft")
    assert ptx["activations"] == pytest.approx(1.5 * without["activations"], abs=1)  # 3 passes for 2
    assert ptx["logits"] == pytest.approx(2 * without["logits"], abs=1)
    assert (
        "policy, value and ptx passes" in plan("smollm2-135m/ppo", "--set", "ppo.activation_checkpointing=false").output
    )


def test_grpo_plan_has_a_generation_phase_that_grows_with_num_generations():
    result = plan("llama2-7b/grpo-qlora-t4")
    assert "generation (the peak)" in result.output and "optimisation" in result.output
    assert "KV cache                    6.00 GiB  8 sequences (2 prompts x 4 answers) x 768 tokens" in result.output
    assert "reward adapter" in result.output and "reference adapter" not in result.output  # beta 0: no reference
    settings = ["train.num_generations=8", "train.per_device_train_batch_size=8", "train.beta=0.04"]
    more = plan("llama2-7b/grpo-qlora-t4", *[arg for setting in settings for arg in ("--set", setting)]).output
    assert "16 sequences (2 prompts x 8 answers)" in more and "reference adapter" in more


def test_kto_plan_keeps_the_reference_copy_like_dpo():
    result = plan("llama2-7b/kto-qlora-t4")
    assert "reference adapter" in result.output and "verdict     fits on NVIDIA T4" in result.output


def test_memory_gb_replaces_the_gpu_table():
    assert "does not fit" in plan("llama2-7b/sft-qlora-t4", "--memory-gb", "6").output
    assert "fits on a 24 GiB GPU" in plan("llama2-7b/sft-qlora-t4", "--memory-gb", "24").output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpu", "p100"], "unknown GPU"),
        (["--memory-gb", "0"], "must be above 0"),
        (["--set", "model.precision=bf16"], "no native bf16"),
    ],
)
def test_bad_plan_requests_exit_2(args, message):
    result = plan("llama2-7b/sft-qlora-t4", *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_fits_its_gpu_with_headroom(name):
    result = plan(name, "--gpu", "t4")
    assert result.exit_code == 0, result.output
    assert "verdict     fits on NVIDIA T4 (" in result.output, result.output


def test_a_plan_follows_a_run_folder_to_its_base_and_adapter(sft_run, tmp_path):
    recipe = tmp_path / "dpo.yaml"
    recipe.write_text(f"method: dpo\nmodel: {{name: {sft_run}}}\ndata: {{train: builtin:pirate_prefs}}\n")
    result = plan(str(recipe), "--set", f"output_dir={tmp_path / 'dpo'}")
    assert result.exit_code == 0, result.output
    assert "tiny-llama2" in result.output and "reference adapter" in result.output


def test_training_commands_warn_when_the_plan_says_it_will_not_fit():
    recipe = load_recipe("llama2-7b/sft-qlora-t4", ["model.precision=auto"])
    said = []
    warn_if_too_big(recipe, said.append, memory_gib=4)
    assert said and "will likely run out of memory" in said[0]
    said.clear()
    warn_if_too_big(recipe, said.append, memory_gib=80)
    assert said == []


@pytest.mark.parametrize(("memory_gib", "checkpointed"), [(24, False), (2, True)])
def test_auto_checkpointing_turns_on_only_when_the_run_would_not_fit_without_it(memory_gib, checkpointed):
    from posttrain.plan.fit import resolve_auto_checkpointing
    from posttrain.precision import Hardware

    recipe = load_recipe("smollm2-135m/sft", ["train.activation_checkpointing=auto"])  # 3.0 GiB without on a CPU
    lines = resolve_auto_checkpointing(recipe, Hardware("cpu", "CPU"), "fp32", memory_gib)
    assert recipe.train["activation_checkpointing"] is checkpointed
    assert f"activation checkpointing {'on' if checkpointed else 'off'} (auto)" in lines[0]
    assert f"of {memory_gib} GiB RAM" in lines[0]


def test_a_plan_settles_auto_checkpointing_for_the_gpu_it_plans_for():
    t4 = plan("llama2-7b/sft-qlora-t4", "--set", "train.activation_checkpointing=auto", "--gpu", "t4")
    a100 = plan("llama2-7b/sft-qlora-t4", "--set", "train.activation_checkpointing=auto", "--gpu", "a100-80gb")
    assert "activation checkpointing on (auto)" in t4.output and "verdict     fits" in t4.output
    assert "activation checkpointing off (auto)" in a100.output
