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


# ---------------------------------------------------------------- continued pretraining keeps every token


def long_tailed_documents(count: int = 40) -> list[str]:
    """Web-text-like documents: most short, a few far longer than max_length."""
    words = [
        "the",
        "captain",
        "sailed",
        "past",
        "the",
        "harbour",
        "light",
        "while",
        "the",
        "crew",
        "sang",
        "of",
        "gold",
        "and",
        "storms",
    ]
    sizes = [20 + (i * 37) % 90 for i in range(count - 3)] + [600, 900, 1500]
    return [" ".join(words[(i + k) % len(words)] for k in range(size)) for i, size in enumerate(sizes)]


def assert_blocks_keep_every_token(prepared, tokenizer, texts: list[str], max_length: int) -> None:
    documents = [len(tokenizer(text)["input_ids"]) for text in texts]
    blocks = [len(row["input_ids"]) for row in prepared.train]
    assert sum(blocks) == sum(documents) + len(texts)  # + one EOS per document
    assert all(n == max_length for n in blocks[:-1]) and 0 < blocks[-1] <= max_length
    assert prepared.report.blocks.documents == len(texts) and prepared.report.too_long == 0


def test_text_jsonl_becomes_blocks_holding_every_token_and_one_eos_per_document(tiny_model, jsonl):
    from posttrain.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_model, "llama2")
    texts = long_tailed_documents()
    prepared = prepare_data(DataSection(train=str(jsonl([{"text": t} for t in texts])), max_length=128), tokenizer)
    assert_blocks_keep_every_token(prepared, tokenizer, texts, 128)
    assert sum(row["input_ids"].count(tokenizer.eos_token_id) for row in prepared.train) == len(texts)
    assert "no token dropped" in prepared.report.lines()[-1]


def test_a_folder_of_txt_files_is_one_document_per_file_or_per_section(tiny_model, tmp_path):
    from posttrain.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_model, "llama2")
    texts = long_tailed_documents(12)
    (tmp_path / "notes" / "deeper").mkdir(parents=True)
    for i, text in enumerate(texts):
        folder = tmp_path / "notes" / ("deeper" if i % 2 else "")
        (folder / f"doc{i:02d}.{'md' if i % 3 else 'txt'}").write_text(text + "\n")
    prepared = prepare_data(DataSection(train=str(tmp_path / "notes"), max_length=128), tokenizer)
    assert_blocks_keep_every_token(prepared, tokenizer, [t + "\n" for t in texts], 128)

    (tmp_path / "book.txt").write_text("First part.\n\nSecond part.\n  \n\nThird part.\n")
    by_section = read_rows(str(tmp_path / "book.txt"), documents="section")
    assert [row.data["text"] for row in by_section] == ["First part.", "Second part.", "Third part."]
    assert len(read_rows(str(tmp_path / "*.txt"))) == 1  # a glob


# ---------------------------------------------------------------- mixtures


def test_a_mixture_reads_each_source_in_its_own_format_with_weights_and_caps(tiny_model, jsonl):
    from posttrain.models.loading import load_tokenizer
    from posttrain.recipe import build_recipe

    tokenizer = load_tokenizer(tiny_model, "llama2")
    alpaca = jsonl([{"instruction": f"Q{i}", "input": "", "output": f"A{i}"} for i in range(10)], "alpaca.jsonl")
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Arr!"}]
    sharegpt = jsonl([{"conversations": turns}] * 8, "sharegpt.jsonl")
    recipe = build_recipe(
        {
            "method": "sft",
            "model": {"name": "tiny-llama2"},
            "data": {"train": [{"path": str(alpaca), "weight": 1.5}, {"path": str(sharegpt), "max_rows": 4}]},
            "output_dir": "unused",
        }
    )
    prepared = prepare_data(recipe.data, tokenizer)
    assert prepared.format == "alpaca + sharegpt"
    assert len(prepared.train) == 15 + 4
    assert [s["rows"] for s in prepared.sources] == [10, 4] and prepared.sources[0]["weighted_rows"] == 15
    lines = prepared.report.lines()
    assert any("alpaca.jsonl: alpaca, 10 rows, weight 1.5 -> 15 train rows" in line for line in lines)
    assert any("sharegpt.jsonl: sharegpt, 4 rows (max_rows 4 of 8)" in line for line in lines)


def test_weighted_rows_are_never_also_held_out(tiny_model, jsonl):
    from posttrain.models.loading import load_tokenizer
    from posttrain.sections import DataSource

    tokenizer = load_tokenizer(tiny_model, "llama2")
    path = jsonl([{"prompt": f"Q{i}", "completion": f"A{i}"} for i in range(20)])
    spec = DataSection(train=[DataSource(str(path), weight=2)], eval_fraction=0.2)
    prepared = prepare_data(spec, tokenizer)
    assert (len(prepared.train), len(prepared.eval)) == (32, 4)
    assert not any(row in prepared.train for row in prepared.eval)


def test_a_mixture_of_text_and_conversations_is_refused(tiny_model, jsonl):
    from posttrain.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_model, "llama2")
    text, chat = jsonl([{"text": "Once."}], "text.jsonl"), jsonl([{"messages": CHAT}], "chat.jsonl")
    with pytest.raises(UserError, match=r"mixes raw text \(.*text.jsonl\) with conversations"):
        prepare_data(DataSection(train=[str(text), str(chat)]), tokenizer)


@pytest.mark.parametrize(
    ("train", "message"),
    [
        ([{"path": "a.jsonl", "wieght": 2}], r"data\.train\[0\]\.wieght: .*did you mean weight"),
        (["a.jsonl", {"path": "b.jsonl", "weight": 2, "max_rows": 5}], r"data\.train\[1\]: .*weight or max_rows"),
        ([{"path": "a.jsonl", "max_rows": "lots"}], r"data\.train\[0\]\.max_rows: expected a whole number"),
        ([{"weight": 2}], r"data\.train\[0\]: .*needs a path"),
    ],
)
def test_a_bad_data_source_is_named_by_its_place_in_the_list(train, message):
    from posttrain.recipe import build_recipe

    with pytest.raises(UserError, match=message):
        build_recipe({"method": "sft", "model": {"name": "tiny-llama2"}, "data": {"train": train}, "output_dir": "x"})
