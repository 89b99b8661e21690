"""Llama-2 tokenizer conventions on tiny-llama2, checked on what the SFT trainer actually trains on."""

import pytest

from posttrain.methods import sft
from posttrain.models.loading import load_tokenizer
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
