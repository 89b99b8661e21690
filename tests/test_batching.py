"""Batches without padding: a padding-free batch gives each row exactly the loss it has alone, SFT uses such batches
by default (positions restart at each row, so packed rows never attend to each other) and reports the padding share
it measured, exactly, and data of several sources and formats trains."""

import json

import pytest
import torch

from posttrain.data.padding import padded_fraction
from posttrain.methods import sft
from posttrain.methods.common import run_method
from posttrain.recipe import load_recipe


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_padding_free_batch_gives_every_row_the_loss_it_has_alone(tiny_model, attention):
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model.base, attn_implementation=attention, dtype=torch.float32)
    model.eval()
    rows = [torch.randint(3, 1000, (n,)).tolist() for n in (5, 17, 9, 30)]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)([{"input_ids": r} for r in rows])
    assert batch["input_ids"].shape == (1, sum(map(len, rows))) and "attention_mask" not in batch
    with torch.no_grad():
        packed = model(**batch, use_cache=False)  # what TRL's trainer passes, labels included
        alone = [model(input_ids=torch.tensor([r]), labels=torch.tensor([r])) for r in rows]
    start = 0
    for row, output in zip(rows, alone, strict=True):
        torch.testing.assert_close(packed.logits[0, start : start + len(row)], output.logits[0], rtol=1e-5, atol=1e-5)
        start += len(row)
    # the batch loss is the mean over every row's predicted tokens, as in a padded batch
    predicted = [len(r) - 1 for r in rows]
    expected = sum(o.loss * n for o, n in zip(alone, predicted, strict=True)) / sum(predicted)
    torch.testing.assert_close(packed.loss, expected, rtol=1e-5, atol=1e-6)


def test_a_mixture_of_two_formats_trains_padding_free_and_reports_its_sources(write_recipe, jsonl, tmp_path):
    alpaca = jsonl(
        [{"instruction": f"What is {i} plus {i}?", "output": f"Arr! {2 * i}. Fair winds!"} for i in range(6)],
        "alpaca.jsonl",
    )
    turns = [{"from": "human", "value": "Who are ye?"}, {"from": "gpt", "value": "Captain Byte, matey. " * 6}]
    sharegpt = jsonl([{"conversations": turns}] * 4, "sharegpt.jsonl")
    seen = []
    path = write_recipe(data={"train": [str(alpaca), {"path": str(sharegpt), "weight": 0.5}]})
    metrics = run_method(load_recipe(str(path)), echo=seen.append)
    assert "data        alpaca + sharegpt: 8 train rows, 0 eval rows; loss on assistant turns only" in seen
    assert any(line.startswith("batches     padding-free") for line in seen)
    data = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]
    assert [(s["format"], s["rows"]) for s in data["sources"]] == [("alpaca", 6), ("sharegpt", 4)]
    assert data["sources"][1]["weighted_rows"] == 2
    assert data["batches"]["padding_fraction"] == 0 and data["batches"]["real_tokens"] > 0
    assert metrics["final_step"] == 2


def test_padded_batches_report_the_padding_they_carried(write_recipe, tmp_path):
    seen = []
    path = write_recipe(train={"padding_free": False})
    run_method(load_recipe(str(path)), echo=seen.append)
    estimate = next(line for line in seen if line.startswith("batches"))
    assert "padded to the longest of 2 rows: about" in estimate
    batches = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]["batches"]
    assert 0 < batches["padding_fraction"] < 1 and batches["real_tokens"] < batches["token_slots"]


def sft_trainer(write_recipe, **train):
    stage = sft.prepare(load_recipe(str(write_recipe(train=train))))
    return sft.build_trainer(stage)


def test_the_sft_collator_restarts_positions_at_each_packed_row_so_rows_never_attend_to_each_other(write_recipe):
    torch.manual_seed(0)
    trainer = sft_trainer(write_recipe)  # padding-free by default
    rows = [trainer.train_dataset[i] for i in range(3)]
    lengths = [len(row["input_ids"]) for row in rows]
    assert len(set(lengths)) == 3
    batch = trainer.data_collator(rows)  # the collator training uses (the padding meter around TRL's)
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    model = trainer.model.eval()
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        alone = [model(input_ids=torch.tensor([row["input_ids"]])).logits[0] for row in rows]
    torch.testing.assert_close(packed, torch.cat(alone), rtol=1e-5, atol=1e-5)


def test_the_padding_meter_counts_exactly_the_training_batches_real_tokens_and_slots(write_recipe):
    trainer = sft_trainer(write_recipe, padding_free=False)
    rows = [trainer.train_dataset[i] for i in range(3)]
    lengths = [len(row["input_ids"]) for row in rows]
    trainer.model.train()
    trainer.data_collator(rows)
    trainer.model.eval()
    trainer.data_collator(rows)  # an evaluation batch: not counted
    slots = max(lengths) * 3
    assert trainer.data_collator.metrics() == {
        "padding_fraction": round(1 - sum(lengths) / slots, 4),
        "real_tokens": sum(lengths),
        "token_slots": slots,
    }


def test_the_padding_estimate_pads_each_shuffled_batch_to_its_longest_row():
    assert padded_fraction([1, 2, 3, 10], batch_size=4) == pytest.approx(1 - 16 / 40)
    # seed 42 batches these rows as (1, 9) (9, 9) (1, 9) (1, 1); in file order they would need no padding
    assert padded_fraction([1] * 4 + [9] * 4, batch_size=2, seed=42) == pytest.approx(1 - 40 / 56)
    assert padded_fraction([5, 5, 5], batch_size=2) == 0.0
