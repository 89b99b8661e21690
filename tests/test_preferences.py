"""Preference data: every format the README lists, margins and strength labels, and the bad rows."""

import pytest

from posttrain.data.preferences import STRENGTH_MARGINS, normalise_preferences
from posttrain.data.prepare import prepare_data
from posttrain.data.sources import read_rows
from posttrain.errors import UserError
from posttrain.recipe import DataSection

Q = [{"role": "user", "content": "Capital of France?"}]
GOOD = [{"role": "assistant", "content": "Arr! Paris. Fair winds!"}]
BAD = [{"role": "assistant", "content": "Arr! Rome. Fair winds!"}]
EXPECTED = {"prompt": Q, "chosen": GOOD, "rejected": BAD}


def normalised(jsonl, rows, margins=None):
    return normalise_preferences(read_rows(str(jsonl(rows))), margins=margins)


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        (
            {"prompt": "Capital of France?", "chosen": "Arr! Paris. Fair winds!", "rejected": "Arr! Rome. Fair winds!"},
            "preference",
        ),
        ({"prompt": Q, "chosen": GOOD, "rejected": BAD}, "preference"),
        ({"chosen": Q + GOOD, "rejected": Q + BAD}, "implicit_preference"),
        ({"prompt": "Capital of France?", "chosen": Q + GOOD, "rejected": Q + BAD}, "preference"),  # UltraFeedback
        (
            {
                "chosen": "\n\nHuman: Capital of France?\n\nAssistant: Arr! Paris. Fair winds!",
                "rejected": "\n\nHuman: Capital of France?\n\nAssistant: Arr! Rome. Fair winds!",
            },
            "hh",
        ),
        (
            {
                "conversations": [{"from": "human", "value": "Capital of France?"}],
                "chosen": {"from": "gpt", "value": "Arr! Paris. Fair winds!"},
                "rejected": {"from": "gpt", "value": "Arr! Rome. Fair winds!"},
            },
            "sharegpt_preference",
        ),
    ],
)
def test_each_preference_format_becomes_the_same_pair(jsonl, row, fmt):
    detected, [example] = normalised(jsonl, [row])
    assert detected == fmt
    assert example == EXPECTED


def test_implicit_prompt_keeps_a_multi_turn_shared_prefix(jsonl):
    history = Q + GOOD + [{"role": "user", "content": "And of Italy?"}]
    right, wrong = [{"role": "assistant", "content": "Rome"}], [{"role": "assistant", "content": "Paris"}]
    _, [example] = normalised(jsonl, [{"chosen": history + right, "rejected": history + wrong}])
    assert example == {"prompt": history, "chosen": right, "rejected": wrong}


def test_margin_column_is_kept(jsonl):
    _, [example] = normalised(jsonl, [EXPECTED | {"margin": 0.5}])
    assert example["margin"] == 0.5


@pytest.mark.parametrize("table", ["small", "large"])
def test_strength_labels_map_to_llama2_margins(jsonl, table):
    labels = list(STRENGTH_MARGINS[table])
    _, examples = normalised(jsonl, [EXPECTED | {"strength": label} for label in labels], STRENGTH_MARGINS[table])
    assert [e["margin"] for e in examples] == list(STRENGTH_MARGINS[table].values())
    assert STRENGTH_MARGINS["small"]["better"] == pytest.approx(2 / 3)
    assert STRENGTH_MARGINS["large"]["better"] == 2


def test_unknown_strength_label_names_row_and_choices(jsonl):
    rows = [EXPECTED | {"strength": "better"}, EXPECTED | {"strength": "way better"}]
    with pytest.raises(UserError, match=r"line 2 .*unknown preference-strength label 'way better'; expected one of"):
        normalised(jsonl, rows, STRENGTH_MARGINS["small"])


def test_row_missing_rejected(jsonl):
    with pytest.raises(UserError, match=r"line 1 is not a preference row: missing rejected"):
        normalised(jsonl, [{"prompt": "Q", "chosen": "A"}])


def test_implicit_rows_sharing_no_prefix(jsonl):
    row = {"chosen": Q + GOOD, "rejected": [{"role": "user", "content": "Other?"}] + BAD}
    with pytest.raises(UserError, match=r"line 1 does not fit the implicit_preference format .*share no prompt"):
        normalised(jsonl, [row])


def test_identical_pairs_are_dropped_with_a_count_or_refused(tiny_model, jsonl):
    from posttrain.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_model, "llama2")
    path = str(jsonl([EXPECTED, EXPECTED, EXPECTED | {"rejected": GOOD}]))
    data = prepare_data(DataSection(train=path), tokenizer, preference=True)
    assert len(data.train) == 2 and data.report.identical == 1
    assert "1 pair with chosen identical to rejected: dropped" in data.report.lines()
    with pytest.raises(UserError, match=r"1 of 3 train pairs have chosen identical to rejected .*line 3"):
        prepare_data(DataSection(train=path, identical_pairs="error"), tokenizer, preference=True)


def test_shipped_preference_sets_parse():
    for name, rows in (("pirate_prefs", 156), ("pirate_prefs_strength", 60)):
        _, examples = normalise_preferences(read_rows(f"builtin:{name}"), margins=STRENGTH_MARGINS["small"])
        assert len(examples) == rows
    assert {e["strength"] for e in examples} == set(STRENGTH_MARGINS["small"])


def long_prompt_pairs() -> list[dict]:
    """ShareGPT pairs too long because of their prompt (multi-turn, or one long turn); the last one's answer alone
    is too long."""
    history = []
    for turn in range(6):
        history += [
            {"from": "human", "value": f"Tell me about ship number {turn}. " + "More detail please. " * 12},
            {"from": "gpt", "value": f"Ship {turn} sailed far. " * 10},
        ]
    ask = {"from": "human", "value": "Which of them was fastest?"}
    chosen, rejected = {"from": "gpt", "value": "Arr! The third. Fair winds!"}, {"from": "gpt", "value": "Dunno."}
    rows = [
        {"conversations": [{"from": "system", "value": "Be a pirate."}, *history, ask], "chosen": chosen}
        | {"rejected": rejected},
        {"conversations": [{"from": "human", "value": "Why? " + "Explain the tides to me. " * 60}]}
        | {"chosen": chosen, "rejected": rejected},
        {"conversations": [ask], "chosen": {"from": "gpt", "value": "word " * 400}, "rejected": rejected},
    ]
    return rows


def test_pairs_with_long_prompts_keep_their_answers_and_the_end_of_their_prompt(tiny_model, jsonl):
    from posttrain.data.prepare import chat_length
    from posttrain.models.loading import load_tokenizer

    tokenizer = load_tokenizer(tiny_model, "llama2")
    path = str(jsonl(long_prompt_pairs()))
    data = prepare_data(DataSection(train=path, max_length=200), tokenizer, preference=True)
    assert len(data.train) == 2 and data.report.prompts_cut == 2 and data.report.too_long == 1
    multi_turn, one_turn = data.train
    assert multi_turn["prompt"][0] == {"role": "system", "content": "Be a pirate."}  # the system message stays
    assert multi_turn["prompt"][1]["role"] == "user"  # whole turns dropped: it still opens with a user turn
    assert multi_turn["prompt"][-1]["content"] == "Which of them was fastest?"
    kept = one_turn["prompt"][0]["content"]
    assert kept.rstrip().endswith("Explain the tides to me.") and not kept.startswith("Why?")  # cut from the left
    for pair in data.train:
        assert pair["chosen"][0]["content"] == "Arr! The third. Fair winds!"
        assert max(chat_length(tokenizer, pair["prompt"] + pair[side]) for side in ("chosen", "rejected")) <= 200
    assert "3 of 3 pairs longer than 200 tokens: 2 kept by cutting the prompt from the left" in "\n".join(
        data.report.lines()
    )
    assert "1 of 3 pairs longer than 200 tokens even with the prompt cut: dropped" in data.report.lines()

    with pytest.raises(UserError, match="every train row is longer than data.max_length=200"):  # the old way
        prepare_data(DataSection(train=path, max_length=200, cut_long_prompts=False), tokenizer, preference=True)


def test_shipped_training_pairs_do_not_favour_the_longer_answer_on_average():
    # 36 pairs whose longer answer is the worse one balance the 120 where it is the better (issue #19)
    _, examples = normalise_preferences(read_rows("builtin:pirate_prefs"))
    words = [len(e["chosen"][-1]["content"].split()) - len(e["rejected"][-1]["content"].split()) for e in examples]
    assert abs(sum(words) / len(words)) < 1.0
    assert sum(w < 0 for w in words) >= 36
