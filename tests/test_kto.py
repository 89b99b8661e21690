"""kto on tiny-llama2: unpaired feedback is read (and told apart from SFT data), the run trains only its adapter
against a frozen copy of the SFT adapter, and the result loads like any other run."""

import json

import pytest
import torch
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.data.feedback import balance_lines, normalise_feedback
from posttrain.data.sources import Row, read_rows
from posttrain.methods.common import run_method
from posttrain.recipe import load_recipe

QUESTION = [{"role": "user", "content": "What is 2 plus 2?"}]
KIND = {"role": "assistant", "content": "Arr! Happy to help, the answer is four. Fair winds!"}
RUDE = {"role": "assistant", "content": "Arr! Go away and count yer own fingers, landlubber. Fair winds!"}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def kto_recipe(write_recipe, data: dict | None = None, **sections):
    data = {"train": "builtin:pirate_feedback", "max_length": 128} | (data or {})
    return write_recipe("kto.yaml", method="kto", data=data, **sections)


def test_data_inspect_says_kto_on_messages_and_label_with_the_balance():
    result = invoke("data", "inspect", "builtin:pirate_feedback", "--model", "tiny-llama2", "--chat-template", "llama2")
    assert result.exit_code == 0, result.output
    assert "format messages_feedback, 120 rows of unpaired feedback (posttrain kto)" in result.output
    assert "72 desirable, 48 undesirable" in result.output
    assert "weighted ratio 1.50: above 4/3" in result.output and "train.undesirable_weight=1.50" in result.output


def test_sft_refuses_data_with_a_label_column(write_recipe):
    result = invoke("sft", write_recipe(data={"train": "builtin:pirate_feedback"}), "--dry-run")
    assert result.exit_code == 2, result.output
    assert "label column" in result.output and "posttrain kto" in result.output
    assert "drop the label column" in result.output


def test_each_preference_pair_becomes_one_desirable_and_one_undesirable_row():
    rows = [Row({"prompt": "What is 2 plus 2?", "chosen": KIND["content"], "rejected": RUDE["content"]}, "line 1")]
    fmt, sources, examples = normalise_feedback(rows)
    assert fmt == "preference (unpaired)" and len(sources) == 2
    assert examples == [
        {"prompt": QUESTION, "completion": [KIND], "label": True},
        {"prompt": QUESTION, "completion": [RUDE], "label": False},
    ]


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": "What is 2 plus 2?", "completion": KIND["content"], "label": True},
        {"prompt": QUESTION, "completion": [KIND], "label": "true"},  # CSV files write labels as text
        {"messages": [*QUESTION, KIND], "label": 1},
    ],
)
def test_every_feedback_format_gives_the_same_unpaired_row(row):
    _, _, examples = normalise_feedback([Row(row, "line 1")])
    assert examples == [{"prompt": QUESTION, "completion": [KIND], "label": True}]


def test_a_label_that_is_not_true_or_false_is_a_user_error_naming_the_row(jsonl, write_recipe):
    path = jsonl([{"messages": [*QUESTION, KIND], "label": "maybe"}] * 4)
    result = invoke("kto", kto_recipe(write_recipe, data={"train": str(path)}), "--dry-run")
    assert result.exit_code == 2, result.output
    assert "line 1" in result.output and "expected 'label' true (desirable) or false" in result.output


def test_the_advice_names_the_weight_that_restores_the_balance():
    scarce = [{"label": True}] * 10 + [{"label": False}] * 30
    assert "set train.desirable_weight=3.00" in balance_lines(scarce)[-1]
    assert "within the KTO paper's 1 to 4/3" in balance_lines(scarce, desirable_weight=3.5)[-1]


def test_a_batch_of_one_is_refused_because_the_kl_term_needs_other_answers(write_recipe):
    recipe = kto_recipe(write_recipe, train={"per_device_train_batch_size": 1})
    result = invoke("kto", recipe, "--dry-run")
    assert result.exit_code == 2 and "per_device_train_batch_size" in result.output


def test_kto_from_an_sft_run_trains_its_adapter_and_keeps_the_reference_copy_frozen(write_recipe, sft_run):
    recipe = kto_recipe(
        write_recipe,
        model={"name": str(sft_run), "quantization": "nf4"},
        train={"learning_rate": 1e-2, "max_steps": 2, "per_device_train_batch_size": 4},
    )
    seen = {}

    def snapshot(trainer):
        seen["trainer"] = trainer
        seen["before"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    metrics = run_method(load_recipe(str(recipe)), echo=lambda _: None, before_train=snapshot)
    after, before = dict(seen["trainer"].model.named_parameters()), seen["before"]
    trainable = [n for n, p in after.items() if p.requires_grad]
    frozen = [n for n, p in after.items() if not p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)
    assert [n for n in trainable if torch.equal(before[n], after[n])] == []
    assert [n for n in frozen if not torch.equal(before[n], after[n])] == []
    assert any(".ref." in n for n in frozen)  # the SFT adapter's frozen copy: the reference
    assert metrics["reference_model"] == f"the starting adapter of {sft_run}"


def test_kto_runs_through_the_cli_and_its_run_loads_in_generate_and_merge(write_recipe, jsonl, tmp_path):
    result = invoke("kto", kto_recipe(write_recipe))
    assert result.exit_code == 0, result.output
    assert "72 desirable, 48 undesirable" in result.output and "done: run folder" in result.output
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text())["data"]["train_rows"] == 120
    prompts = jsonl([{"prompt": "Why is the sky blue?"}], "prompts.jsonl")
    replies = tmp_path / "replies.jsonl"
    generated = invoke("generate", run, "--prompts", prompts, "--output", replies, "--max-new-tokens", "4")
    assert generated.exit_code == 0, generated.output
    assert len(read_rows(str(replies))) == 1
    merged = invoke("merge", run, "--output", tmp_path / "merged")
    assert merged.exit_code == 0, merged.output
    assert (tmp_path / "merged" / "model.safetensors").is_file()
