"""Llama-2 tokenizer conventions on tiny-llama2, checked on what the SFT trainer actually trains on, and the
assistant masks of the llama2 and chatml templates token by token."""

import re

import pytest

from posttrain.errors import UserError
from posttrain.methods import sft
from posttrain.models.loading import load_tokenizer
from posttrain.models.templates import CHATML_TOKENS, prepare_tokenizer
from posttrain.recipe import load_recipe

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Arr! Hello."},
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "Fair winds!"},
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_tokenizer(tiny_model, "llama2")


def test_tiny_llama2_has_llama2_special_tokens(tokenizer):
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)


def test_pad_token_is_not_eos_and_needs_no_new_embedding(tokenizer, tiny_model):
    from transformers import AutoConfig

    assert tokenizer.pad_token == "<unk>" and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert len(tokenizer) == AutoConfig.from_pretrained(tiny_model.base).vocab_size
    assert tokenizer.padding_side == "right"


def test_llama2_template_renders_inst_and_sys_blocks(tokenizer):
    text = tokenizer.apply_chat_template(CHAT, tokenize=False)
    assert text == (
        "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Arr! Hello. </s><s>[INST] Bye [/INST] Fair winds! </s>"
    )


@pytest.fixture(scope="module")
def chatml_tokenizer(tiny_model):
    """tiny-llama2's tokenizer with the two ChatML tokens added, set up for chatml as a recipe would."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model.tokenizer)
    tokenizer.add_tokens(list(CHATML_TOKENS), special_tokens=True)
    return prepare_tokenizer(tokenizer, "chatml")


def mask_runs(tokenizer, chat) -> list[tuple[int, str]]:
    """The rendered chat cut where the assistant mask TRL trains with changes: (mask, text of those tokens) each."""
    out = tokenizer.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    cuts = [0] + [i for i in range(1, len(ids)) if mask[i] != mask[i - 1]] + [len(ids)]
    return [(mask[a], tokenizer.decode(ids[a:b])) for a, b in zip(cuts, cuts[1:], strict=False)]


def test_llama2_mask_covers_each_answer_and_its_eos_and_no_other_token(tokenizer):
    assert mask_runs(tokenizer, CHAT) == [
        (0, "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"),
        (1, "Arr! Hello. </s>"),
        (0, "<s>[INST] Bye [/INST]"),
        (1, "Fair winds! </s>"),
    ]
    assert mask_runs(tokenizer, CHAT[1:3]) == [(0, "<s>[INST] Hi [/INST]"), (1, "Arr! Hello. </s>")]


def test_chatml_mask_covers_each_answer_and_its_im_end_and_no_other_token(chatml_tokenizer):
    assert mask_runs(chatml_tokenizer, CHAT) == [
        (0, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
        (1, "Arr! Hello.<|im_end|>"),
        (0, "\n<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"),
        (1, "Fair winds!<|im_end|>"),
        (0, "\n"),
    ]


def test_chatml_ends_generation_at_im_end_and_pads_with_unk(chatml_tokenizer):
    assert chatml_tokenizer.eos_token == "<|im_end|>" and chatml_tokenizer.pad_token == "<unk>"


@pytest.mark.parametrize(
    ("template", "prompt"),
    [
        ("llama2", "<s>[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST]"),
        ("chatml", "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    ],
)
def test_a_prompt_for_a_reply_ends_where_the_answer_begins(tokenizer, chatml_tokenizer, template, prompt):
    chosen = {"llama2": tokenizer, "chatml": chatml_tokenizer}[template]
    assert chosen.apply_chat_template(CHAT[:2], tokenize=False, add_generation_prompt=True) == prompt


def test_llama2_refuses_turns_out_of_order(tokenizer):
    from jinja2 import TemplateError

    with pytest.raises(TemplateError, match="alternate user"):
        tokenizer.apply_chat_template([CHAT[1], CHAT[3]], tokenize=False)


def test_a_pad_token_that_is_eos_gives_way_to_unk(tiny_model):
    from transformers import AutoTokenizer

    shipped = AutoTokenizer.from_pretrained(tiny_model.tokenizer)
    shipped.pad_token = shipped.eos_token  # how many models ship
    assert prepare_tokenizer(shipped, "llama2").pad_token == "<unk>"


def test_chatml_needs_its_tokens_and_auto_keeps_a_models_own_template(tiny_model):
    from transformers import AutoTokenizer

    shipped = AutoTokenizer.from_pretrained(tiny_model.tokenizer)
    with pytest.raises(UserError, match=re.escape("chatml needs the tokens <|im_start|>, <|im_end|>")):
        prepare_tokenizer(shipped, "chatml")
    shipped.chat_template = "{{ messages[0]['content'] }}"
    assert prepare_tokenizer(shipped, "auto").chat_template == "{{ messages[0]['content'] }}"


def test_template_tokens_start_with_one_bos(tokenizer):
    ids = tokenizer.apply_chat_template(CHAT[:3], tokenize=True, return_dict=True)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1


def test_byte_fallback_round_trips_any_text(tokenizer):
    text = "Héllo 🦜 naïve"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def _train_rows(write_recipe, jsonl, rows, **data):
    recipe = load_recipe(str(write_recipe(data={"train": str(jsonl(rows)), "max_length": 256, **data})))
    stage = sft.prepare(recipe)
    return stage.tokenizer, sft.build_trainer(stage).train_dataset


def test_assistant_only_loss_masks_everything_but_answers_and_their_eos(write_recipe, jsonl):
    tokenizer, dataset = _train_rows(write_recipe, jsonl, [{"messages": CHAT}])
    row = dataset[0]
    learned = [t for t, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100]
    assert tokenizer.decode(learned) == "Arr! Hello. </s> Fair winds! </s>"
    assert row["input_ids"].count(tokenizer.bos_token_id) == 2  # one per turn, never doubled


TEXTS = [{"text": "Plain words."}, {"text": "Ends already.</s>"}]


def test_raw_text_gets_one_bos_and_exactly_one_eos(write_recipe, jsonl):
    tokenizer, dataset = _train_rows(write_recipe, jsonl, TEXTS, text_blocks=False)  # a row per document
    for row in dataset:
        ids = row["input_ids"]
        assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
        assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
        assert row["labels"] == ids  # continued pretraining learns every token


def test_text_blocks_hold_each_document_with_one_bos_and_one_eos(write_recipe, jsonl):
    tokenizer, dataset = _train_rows(write_recipe, jsonl, TEXTS)  # the default: documents joined into blocks
    [block] = dataset["input_ids"]
    assert block.count(tokenizer.bos_token_id) == 2 and block.count(tokenizer.eos_token_id) == 2
    assert block[0] == tokenizer.bos_token_id and block[-1] == tokenizer.eos_token_id
