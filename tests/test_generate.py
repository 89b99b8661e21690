"""`posttrain generate`: batched replies to a prompt file, one JSONL row per prompt, resumable; and prompt files."""

import json

import pytest
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.data.formats import RowError
from posttrain.data.prompts import prompt_of
from posttrain.data.sources import Row

QUESTIONS = ["What is the capital of Japan?", "Why is the sea salty?", "Name a planet.", "Hi!", "What is 2 plus 2?"]


def generate(model, prompts, output, *extra):
    args = ["generate", str(model), "--prompts", str(prompts), "--output", str(output), "--max-new-tokens", "6"]
    return CliRunner().invoke(app, args + list(extra))


def rows_of(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def prompts(jsonl):
    return jsonl([{"prompt": q} for q in QUESTIONS], "prompts.jsonl")


def test_generate_on_a_run_writes_one_row_per_prompt(sft_run, prompts, tmp_path):
    result = generate(sft_run, prompts, tmp_path / "out.jsonl", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    rows = rows_of(tmp_path / "out.jsonl")
    assert [row["prompt"] for row in rows] == [[{"role": "user", "content": q}] for q in QUESTIONS]
    assert all(isinstance(row["response"], str) for row in rows)
    assert rows[0]["model"] == str(sft_run)
    assert rows[0]["settings"] == {"max_new_tokens": 6, "do_sample": False, "repetition_penalty": 1.0}


def test_a_rerun_generates_only_what_is_missing_and_drops_a_row_cut_short(sft_run, prompts, tmp_path):
    output = tmp_path / "out.jsonl"
    generate(sft_run, prompts, output)
    complete = rows_of(output)
    kept = output.read_text(encoding="utf-8").splitlines()[:2]
    output.write_text("\n".join(kept) + '\n{"prompt": [{"role": "us', encoding="utf-8")  # as a crash leaves it
    result = generate(sft_run, prompts, output)
    assert result.exit_code == 0, result.output
    assert "5 prompts, 2 already in" in result.output and "done: 3 new rows" in result.output
    assert rows_of(output) == complete  # greedy: the same replies, whatever the batch


def test_each_row_says_whether_its_reply_finished_and_rows_without_it_still_resume(sft_run, prompts, tmp_path):
    output = tmp_path / "out.jsonl"
    generate(sft_run, prompts, output)
    rows = rows_of(output)
    # 6 new tokens: the tiny model's replies are cut off, and a reply is finished only if it holds an EOS
    assert all(isinstance(row["finished"], bool) for row in rows) and not all(row["finished"] for row in rows)
    old_rows = [{key: value for key, value in row.items() if key != "finished"} for row in rows[:3]]
    output.write_text("".join(json.dumps(row) + "\n" for row in old_rows), encoding="utf-8")  # as written before
    result = generate(sft_run, prompts, output)
    assert result.exit_code == 0, result.output
    assert "done: 2 new rows" in result.output and rows_of(output)[3:] == rows[3:]


def test_resuming_with_other_settings_is_refused(sft_run, prompts, tmp_path):
    generate(sft_run, prompts, tmp_path / "out.jsonl")
    result = generate(sft_run, prompts, tmp_path / "out.jsonl", "--do-sample")
    assert result.exit_code == 2
    assert (
        "out.jsonl line 1 was generated with settings" in result.output and "choose another --output" in result.output
    )


def test_batched_replies_match_one_by_one_replies():
    from posttrain.inference.generation import GenerationSettings, answer_chats
    from posttrain.models.loading import load_run_model

    model, tokenizer = load_run_model("tiny-llama2")
    chats = [[{"role": "user", "content": q}] for q in QUESTIONS]  # of different lengths: left padding at work
    settings = GenerationSettings(max_new_tokens=8)
    alone = [answer_chats(model, tokenizer, [chat], settings)[0] for chat in chats]
    assert answer_chats(model, tokenizer, chats, settings) == alone


def test_a_sampling_knob_out_of_range_is_a_user_error(prompts, tmp_path):
    result = generate("tiny-llama2", prompts, tmp_path / "out.jsonl", "--do-sample", "--top-p", "1.5")
    assert result.exit_code == 2 and "--top-p must be in (0, 1]" in result.output


def test_a_prompt_file_without_usable_prompts_is_reported_row_by_row(sft_run, jsonl, tmp_path):
    bad = jsonl([{"prompt": "  "}, {"text": "raw text"}, {"messages": [{"role": "assistant", "content": "Hi"}]}])
    result = generate(sft_run, bad, tmp_path / "out.jsonl")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "data.jsonl has no usable prompts" in result.output
    assert "data.jsonl line 1: the last user turn is empty" in result.output
    assert "line 2: raw text has no prompt" in result.output and "line 3: the prompt has no user turn" in result.output
    assert not (tmp_path / "out.jsonl").exists()


def test_a_run_whose_base_is_gone_is_a_user_error(sft_run, prompts, tmp_path):
    import shutil

    moved = tmp_path / "moved-run"
    shutil.copytree(sft_run, moved)
    recipe = moved / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("base_model: tiny-llama2", "base_model: /nowhere/base"))
    result = generate(moved, prompts, tmp_path / "out.jsonl")
    assert result.exit_code == 2
    assert "was trained on the base model /nowhere/base, which cannot be found" in result.output
    assert "set base_model in" in result.output


def test_a_model_that_is_neither_model_nor_run_is_a_user_error(prompts, tmp_path):
    result = generate(tmp_path, prompts, tmp_path / "out.jsonl")
    assert result.exit_code == 2 and "is neither a model folder (no config.json) nor a posttrain run" in result.output


@pytest.mark.parametrize(
    ("row", "prompt"),
    [
        ({"prompt": "Hi?"}, [{"role": "user", "content": "Hi?"}]),
        ({"prompt": "Hi?", "completion": "Hello."}, [{"role": "user", "content": "Hi?"}]),
        (
            {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
            [{"role": "user", "content": "Hi?"}],
        ),
        ({"conversations": [{"from": "human", "value": "Hi?"}]}, [{"role": "user", "content": "Hi?"}]),
        ({"instruction": "Add", "input": "2 and 2", "output": "4"}, [{"role": "user", "content": "Add\n\n2 and 2"}]),
        ({"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go."}, [{"role": "user", "content": "Hi?"}]),
        (
            {"chosen": "\n\nHuman: Hi?\n\nAssistant: Hello.", "rejected": "\n\nHuman: Hi?\n\nAssistant: Go."},
            [{"role": "user", "content": "Hi?"}],
        ),
    ],
    ids=["prompt", "prompt_completion", "messages", "sharegpt", "alpaca", "preference", "hh"],
)
def test_every_data_format_gives_its_prompt(row, prompt):
    assert prompt_of(Row(row, "row 1")) == prompt


def test_a_row_without_a_prompt_says_what_was_expected():
    with pytest.raises(RowError, match="found keys \\['question'\\], but each row needs a prompt"):
        prompt_of(Row({"question": "Hi?"}, "row 1"))
