"""`posttrain sft` on tiny-llama2: the adapter learns, the base stays frozen, runs reload, chain and resume."""

import pytest
import torch

from posttrain.methods.common import run_method
from posttrain.models.loading import resolve_model
from posttrain.recipe import load_recipe


def train(recipe_path, overrides=(), **options):
    """Run SFT; return the trainer and snapshots of every parameter from just before training."""
    seen = {}

    def snapshot(trainer):
        seen["trainer"] = trainer
        seen["before"] = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}

    recipe = load_recipe(str(recipe_path), list(overrides))
    metrics = run_method(recipe, echo=lambda _: None, before_train=snapshot, **options)
    return seen["trainer"], seen["before"], metrics


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_every_lora_weight_changes_and_the_base_does_not(write_recipe, quantization):
    path = write_recipe(model={"quantization": quantization}, train={"learning_rate": 1e-2, "max_steps": 3})
    trainer, before, _ = train(path)
    after = dict(trainer.model.named_parameters())
    lora = [name for name in before if "lora_" in name]
    frozen = [name for name in before if "lora_" not in name]
    assert lora and frozen
    assert all(after[name].requires_grad for name in lora)
    assert [name for name in lora if torch.equal(before[name], after[name])] == []
    assert [name for name in frozen if not torch.equal(before[name], after[name])] == []
    assert all(after[name].dtype == torch.float32 for name in lora)  # TRL's bf16 cast was undone


def test_4bit_path_really_quantizes_the_base(write_recipe):
    trainer, _, _ = train(write_recipe(model={"quantization": "nf4"}))
    linear_types = {type(m).__name__ for name, m in trainer.model.named_modules() if name.endswith("q_proj.base_layer")}
    assert linear_types == {"Linear4bit"}


def test_run_folder_holds_everything_design_promises(write_recipe, tmp_path):
    _, _, metrics = train(write_recipe(data={"eval_fraction": 0.1}, train={"report_to": "tensorboard"}))
    run = tmp_path / "run"
    for piece in (
        "recipe.yaml",
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "tokenizer.json",
        "chat_template.jinja",
        "metrics.json",
    ):
        assert (run / piece).exists(), piece
    assert not (run / "checkpoints" / "checkpoint-2").exists()  # no checkpoint of the last step: the adapter is it
    assert list((run / "logs").glob("events.out.tfevents.*"))
    assert not (run / "checkpoints" / "runs").exists()  # every log lands in logs/
    assert "versions:" in (run / "recipe.yaml").read_text()
    assert metrics["final_step"] == 2 and "eval_loss" in metrics["eval"]
    assert metrics["data"]["format"] == "messages"


def test_adapter_reloads_from_the_run_folder_and_generates(write_recipe, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from posttrain.inference.generation import answer
    from posttrain.models.loading import load_tokenizer

    trainer, _, _ = train(write_recipe(train={"learning_rate": 1e-2}))
    ref = resolve_model(str(tmp_path / "run"))
    assert ref.name == "tiny-llama2" and ref.adapter == (tmp_path / "run" / "adapter").resolve()
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(ref.base), str(ref.adapter))
    trained = dict(trainer.model.named_parameters())
    reloaded = {name: param for name, param in model.named_parameters() if "lora_" in name}
    assert reloaded and all(torch.equal(param, trained[name]) for name, param in reloaded.items())
    tokenizer = load_tokenizer(ref, "llama2")
    question = ["Why is the sky blue?"]
    assert answer(model, tokenizer, question, max_new_tokens=8) == answer(trainer.model, tokenizer, question, 8)


def test_a_run_folder_can_be_the_model_of_the_next_stage(write_recipe, tmp_path):
    train(write_recipe(train={"learning_rate": 1e-2}))
    second = write_recipe("second.yaml", model={"name": str(tmp_path / "run")}, output_dir=str(tmp_path / "run2"))
    trainer, before, _ = train(second)
    first_adapter = trainer.model.peft_config["default"]
    assert first_adapter.r == 16
    # training continued from the first run's adapter, not from a fresh (zero-B) one
    assert any(name.endswith("lora_B.default.weight") and before[name].abs().sum() > 0 for name in before)
    assert (tmp_path / "run2" / "recipe.yaml").read_text().count("base_model: tiny-llama2") == 1


def test_resume_continues_from_the_checkpoint_and_ends_where_an_uninterrupted_run_ends(write_recipe, tmp_path):
    import shutil

    path = write_recipe(train={"max_steps": 4, "save_steps": 2, "learning_rate": 1e-2})
    whole, _, _ = train(path)
    reference = {n: p.detach().clone() for n, p in whole.model.named_parameters() if p.requires_grad}
    run = tmp_path / "run"
    # As if the process had died after the last step (which has no checkpoint), before its adapter and metrics:
    assert not (run / "checkpoints" / "checkpoint-4").exists()
    shutil.rmtree(run / "adapter")
    (run / "metrics.json").unlink()

    resumed, _, metrics = train(path, resume=True)
    assert metrics["final_step"] == 4
    assert [entry["step"] for entry in metrics["log_history"] if "loss" in entry] == [1, 2, 3, 4]
    params = dict(resumed.model.named_parameters())
    for name, param in reference.items():
        torch.testing.assert_close(params[name], param)
