"""`data inspect` reads what training reads (prompt-only sets too) and counts what training keeps, by training's own
code: pairs kept by cutting their prompt are kept, identical pairs are reported."""

import re

from typer.testing import CliRunner

from posttrain.cli import app

runner = CliRunner()
TINY = ["--model", "tiny-llama2", "--chat-template", "llama2"]


def inspect(source, *options):
    result = runner.invoke(app, ["data", "inspect", str(source), *TINY, *options])
    assert result.exit_code == 0, result.output
    return result.output


def pair(prompt: str, chosen: str, rejected: str) -> dict:
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def test_inspect_reads_a_prompt_only_file(jsonl):
    output = inspect(jsonl([{"prompt": "Why is the sea salty?"}, {"prompt": "Name a planet.", "tags": ["safety"]}]))
    assert "format prompts, 2 prompts" in output and "read by generate, rs, ppo, grpo" in output
    assert "1 tagged safety" in output and "tokens per prompt" in output


def test_inspect_reads_dialogues_of_user_turns_as_gatt_does():
    output = inspect("builtin:gatt_dialogues")
    assert "format dialogues (user turns only), 24 dialogues" in output and "user turns per dialogue" in output


def test_inspect_keeps_what_training_keeps_and_reports_identical_pairs(jsonl):
    from posttrain.data.prepare import prepare_data
    from posttrain.models.loading import load_tokenizer, resolve_model
    from posttrain.sections import DataSection

    long_prompt = "Tell me about the old ships and the sea and the wind and the stars. " * 6
    rows = [pair(long_prompt, "Arr, they sailed far.", "Ships are boats.") for _ in range(3)]
    rows += [pair("Hello?", "Ahoy there, matey!", "Hi."), pair("Same?", "Aye.", "Aye.")]
    rows += [pair("Long answers?", "Arr! " * 80, "No.")]  # no prompt cut makes room for this answer
    path = jsonl(rows)
    output = inspect(path, "--max-length", "64")
    assert "3 kept by cutting the prompt from the left" in output
    assert "1 pair with chosen identical to rejected: dropped" in output
    kept = int(re.search(r"training keeps (\d+) of 6 pairs", output).group(1))
    tokenizer = load_tokenizer(resolve_model("tiny-llama2"), "llama2")
    trained = prepare_data(DataSection(train=str(path), max_length=64), tokenizer, preference=True).train
    assert kept == len(trained) == 4


def test_one_row_is_one_row(jsonl):
    output = inspect(
        jsonl([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Arr!"}]}])
    )
    assert "format messages, 1 row (" in output and ", 1 rows" not in output
