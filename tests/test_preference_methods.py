"""reward, dpo and orpo on tiny-llama2: what trains, what stays frozen, and what each method promises."""

import math

import pytest
import torch

from posttrain.evaluation.scoring import score_conversations
from posttrain.methods import reward
from posttrain.methods.common import run_method
from posttrain.recipe import load_recipe

KIND = [{"role": "assistant", "content": "Arr! Happy to help, the answer is four. Fair winds!"}]
RUDE = [{"role": "assistant", "content": "Arr! Go away and count yer own fingers, landlubber. Fair winds!"}]


@pytest.fixture
def pairs(jsonl):
    rows = [
        {"prompt": [{"role": "user", "content": f"What is {i} plus {4 - i}?"}], "chosen": KIND, "rejected": RUDE}
        for i in range(8)
    ]
    return str(jsonl(rows, "pairs.jsonl"))


def train(write_recipe, method: str, data: dict, name="recipe.yaml", **sections):
    path = write_recipe(name, method=method, data={"max_length": 128} | data, **sections)
    seen = {}

    def snapshot(trainer):
        seen["trainer"] = trainer
        seen["before"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    metrics = run_method(load_recipe(str(path)), echo=lambda _: None, before_train=snapshot)
    return seen["trainer"], seen["before"], metrics


@pytest.mark.parametrize("quantization", ["none", "nf4"])
@pytest.mark.parametrize("method", ["reward", "dpo", "orpo"])
def test_trainable_weights_change_and_frozen_ones_do_not(write_recipe, pairs, method, quantization):
    trainer, before, _ = train(
        write_recipe,
        method,
        {"train": pairs},
        model={"quantization": quantization},
        train={"learning_rate": 1e-2, "max_steps": 3},
    )
    after = dict(trainer.model.named_parameters())
    trainable = [n for n, p in after.items() if p.requires_grad]
    frozen = [n for n, p in after.items() if not p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)
    assert [n for n in trainable if torch.equal(before[n], after[n])] == []
    assert [n for n in frozen if not torch.equal(before[n], after[n])] == []  # base (and DPO's ref copy)
    if method == "reward":
        assert any("score" in n for n in trainable)  # the head trains in full


def test_reward_model_overfits_a_small_set_and_reloads_with_the_same_scores(write_recipe, pairs, tmp_path):
    from posttrain.models.loading import load_run_model

    trainer, _, metrics = train(
        write_recipe,
        "reward",
        {"train": pairs, "eval": pairs},
        train={"learning_rate": 3e-3, "max_steps": 20, "per_device_train_batch_size": 4},
    )
    assert metrics["reward_accuracy"]["accuracy"] >= 0.9  # chance is 0.5

    conversations = [[{"role": "user", "content": "What is 2 plus 2?"}] + reply for reply in (KIND, RUDE)]
    trained_scores = score_conversations(trainer.model, trainer.processing_class, conversations)
    model, tokenizer = load_run_model(str(tmp_path / "run"), task_type="SEQ_CLS")
    assert score_conversations(model, tokenizer, conversations) == pytest.approx(trained_scores, abs=1e-5)


def test_margins_from_strength_labels_reach_the_loss(write_recipe, jsonl):
    rows = [
        {"prompt": "Q?", "chosen": "Arr! Yes. Fair winds!", "rejected": "Arr! No. Fair winds!", "strength": label}
        for label in ("significantly better", "negligibly better or unsure")
    ] * 2
    path = write_recipe(method="reward", data={"train": str(jsonl(rows))}, reward={"margins": "large"})
    stage = reward.prepare(load_recipe(str(path)))
    assert [row["margin"] for row in stage.data.train] == [3.0, 0.0, 3.0, 0.0]
    trainer = reward.build_trainer(stage)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    losses = []
    for margin in (0.0, 3.0):  # same pair, same scores: only the margin differs
        batch["margin"] = torch.tensor([margin])
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, batch).item())
    assert losses[1] > losses[0]


def test_dpo_from_an_sft_run_uses_it_as_reference(write_recipe, pairs, tmp_path):
    train(write_recipe, "sft", {"train": "builtin:pirate_sft"}, train={"learning_rate": 1e-2, "max_steps": 4})
    _, _, metrics = train(
        write_recipe,
        "dpo",
        {"train": pairs},
        name="dpo.yaml",
        model={"name": str(tmp_path / "run")},
        train={"max_steps": 2, "logging_steps": 1},
        output_dir=str(tmp_path / "dpo"),
    )
    first = metrics["log_history"][0]
    # policy == reference at step 1 only if the reference is the SFT model (the bare base would differ)
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-3)
    assert first["rewards/rejected"] == pytest.approx(0, abs=1e-3)
    assert "starting adapter" in metrics["reference_model"]
    assert not list((tmp_path / "dpo" / "adapter").glob("*/adapter_config.json"))  # the ref copy is not saved


def test_orpo_adapter_reloads_and_generates(write_recipe, pairs, tmp_path):
    from posttrain.inference.generation import answer
    from posttrain.models.loading import load_run_model

    trainer, _, _ = train(write_recipe, "orpo", {"train": pairs}, train={"max_steps": 2, "learning_rate": 1e-2})
    model, tokenizer = load_run_model(str(tmp_path / "run"))
    trained = dict(trainer.model.named_parameters())
    reloaded = {name: param for name, param in model.named_parameters() if "lora_" in name}
    assert reloaded and all(torch.equal(param, trained[name]) for name, param in reloaded.items())
    question = ["What is 2 plus 2?"]
    reply = answer(model, tokenizer, question, max_new_tokens=6)
    assert reply == answer(trainer.model, trainer.processing_class, question, max_new_tokens=6)  # the trained model


def test_a_reward_run_is_refused_where_an_sft_run_is_expected_and_vice_versa(write_recipe, pairs, tmp_path):
    from typer.testing import CliRunner

    from posttrain.cli import app

    train(write_recipe, "reward", {"train": pairs}, train={"max_steps": 1})
    dpo_recipe = write_recipe(
        "dpo.yaml",
        method="dpo",
        data={"train": pairs, "max_length": 128},
        model={"name": str(tmp_path / "run")},
        output_dir=str(tmp_path / "dpo"),
    )
    result = CliRunner().invoke(app, ["dpo", str(dpo_recipe)])
    assert result.exit_code == 2 and "was trained by `posttrain reward`, but dpo continues from" in result.output
    assert not (tmp_path / "dpo").exists()

    train(
        write_recipe,
        "sft",
        {"train": "builtin:pirate_sft"},
        name="sft.yaml",
        train={"max_steps": 1},
        output_dir=str(tmp_path / "sft"),
    )
    reward_recipe = write_recipe(
        "rm.yaml",
        method="reward",
        data={"train": pairs, "max_length": 128},
        model={"name": str(tmp_path / "sft")},
        output_dir=str(tmp_path / "rm"),
    )
    result = CliRunner().invoke(app, ["reward", str(reward_recipe)])
    assert (
        result.exit_code == 2 and "trained by `posttrain sft`, but reward continues from reward runs" in result.output
    )
    assert "set model.name to its base model" in result.output
