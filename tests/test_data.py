"""SFT data: every format, every file type, and row-level errors that say where and what."""

import json

import pytest

from posttrain.data.formats import normalise
from posttrain.data.prepare import prepare_data
from posttrain.data.sources import read_rows
from posttrain.errors import UserError
from posttrain.recipe import DataSection

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Arr! Hello. Fair winds!"}]


@pytest.mark.parametrize(
    ("row", "fmt", "expected"),
    [
        ({"messages": CHAT}, "messages", {"messages": CHAT}),
        (
            {
                "conversations": [
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Arr! Hello. Fair winds!"},
                ]
            },
            "sharegpt",
            {"messages": CHAT},
        ),
        (
            {"instruction": "Hi", "input": "", "output": "Arr! Hello. Fair winds!"},
            "alpaca",
            {"messages": CHAT},
        ),
        ({"prompt": "Hi", "completion": "Arr! Hello. Fair winds!"}, "prompt_completion", {"messages": CHAT}),
        ({"text": "Once upon a time."}, "text", {"text": "Once upon a time."}),
    ],
)
def test_each_format_is_detected_and_normalised(jsonl, row, fmt, expected):
    detected, rows = normalise(read_rows(str(jsonl([row]))))
    assert detected == fmt
    assert rows == [expected]


def test_alpaca_input_system_and_history_become_turns(jsonl):
    row = {
        "system": "Be a pirate.",
        "history": [["Q1", "A1"]],
        "instruction": "Sum",
        "input": "2+2",
        "output": "4",
    }
    _, [example] = normalise(read_rows(str(jsonl([row]))))
    assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert example["messages"][3]["content"] == "Sum\n\n2+2"


def test_sharegpt_system_turn_is_kept(jsonl):
    row = {
        "conversations": [
            {"from": "system", "value": "S"},
            {"from": "human", "value": "Q"},
            {"from": "gpt", "value": "A"},
        ]
    }
    _, [example] = normalise(read_rows(str(jsonl([row]))))
    assert example["messages"][0] == {"role": "system", "content": "S"}


@pytest.mark.parametrize("suffix", ["json", "csv", "parquet"])
def test_other_file_types_read_the_same_rows(tmp_path, suffix):
    rows = [{"prompt": "Hi", "completion": "Arr!"}, {"prompt": "Yo", "completion": "Ahoy!"}]
    path = tmp_path / f"data.{suffix}"
    if suffix == "json":
        path.write_text(json.dumps(rows))
    elif suffix == "csv":
        path.write_text("prompt,completion\nHi,Arr!\nYo,Ahoy!\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    assert [r.data for r in read_rows(str(path))] == rows


def test_builtin_data_ships_with_the_package():
    fmt, rows = normalise(read_rows("builtin:pirate_sft"))
    assert fmt == "messages" and len(rows) == 120
    assert all(r["messages"][-1]["content"].startswith("Arr!") for r in rows)


def test_row_fitting_no_format_names_file_line_and_expected_shapes(jsonl):
    path = jsonl([{"question": "Hi", "answer": "Arr!"}])
    with pytest.raises(
        UserError, match=r"data\.jsonl line 1 fits no known format: found keys \['answer', 'question'\]"
    ):
        normalise(read_rows(str(path)))


def test_bad_row_in_the_middle_is_reported_by_line(jsonl):
    path = jsonl([{"messages": CHAT}, {"messages": CHAT}, {"messages": [{"role": "user", "content": "no answer"}]}])
    with pytest.raises(UserError, match=r"line 3 does not fit the messages format .*no assistant turn"):
        normalise(read_rows(str(path)))


def test_alpaca_row_missing_output(jsonl):
    with pytest.raises(UserError, match=r"line 2 does not fit the alpaca format .*expected text in 'output'"):
        normalise(read_rows(str(jsonl([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))))


def test_invalid_json_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(UserError, match=r"bad\.jsonl line 2: not valid JSON"):
        read_rows(str(path))


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(UserError, match="holds no rows"):
        read_rows(str(empty))
    with pytest.raises(UserError, match="data file not found"):
        read_rows(str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError, match="no built-in dataset 'nope'"):
        read_rows("builtin:nope")


def test_too_long_rows_are_dropped_truncated_or_refused_with_counts(tiny_model, jsonl):
    from posttrain.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_model, "llama2")
    long_chat = [{"role": "user", "content": "word " * 300}, {"role": "assistant", "content": "Arr!"}]
    path = str(jsonl([{"messages": CHAT}] * 3 + [{"messages": long_chat}]))

    dropped = prepare_data(DataSection(train=path, max_length=64), tokenizer)
    assert len(dropped.train) == 3 and dropped.report.too_long == 1
    assert "1 of 4 rows longer than 64 tokens: dropped" in dropped.report.lines()[-1]

    kept = prepare_data(DataSection(train=path, max_length=64, on_too_long="truncate"), tokenizer)
    assert len(kept.train) == 4

    with pytest.raises(UserError, match=r"1 of 4 train rows are longer than data\.max_length=64 .*line 4"):
        prepare_data(DataSection(train=path, max_length=64, on_too_long="error"), tokenizer)


def test_eval_fraction_holds_out_rows_deterministically(tiny_model):
    from posttrain.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_model, "llama2")
    spec = DataSection(train="builtin:pirate_sft", eval_fraction=0.1, max_length=512)
    first, second = prepare_data(spec, tokenizer), prepare_data(spec, tokenizer)
    assert (len(first.train), len(first.eval)) == (108, 12)
    assert first.eval == second.eval
    assert not any(row in first.train for row in first.eval)
