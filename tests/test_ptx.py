"""PPO-ptx (InstructGPT): the policy's NLL of good answers mixed into every policy update."""

import pytest
import torch
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.data.formats import normalise
from posttrain.data.sources import read_rows
from posttrain.errors import UserError
from posttrain.models.loading import load_inference_tokenizer
from posttrain.rl.ppo_math import masked_mean
from posttrain.rl.ppo_trainer import response_logprobs
from posttrain.rl.ptx import ptx_batch, read_ptx


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return load_inference_tokenizer("tiny-llama2", "auto")[1]


def test_each_answer_follows_its_prompt_as_the_chat_template_lays_out_the_conversation(tokenizer):
    examples, line = read_ptx("builtin:pirate_sft", tokenizer, max_length=512)
    assert len(examples) == 120 and line == "ptx         120 answers from builtin:pirate_sft"
    conversations = [example["messages"] for example in normalise(read_rows("builtin:pirate_sft"))[1][:3]]
    batch, query_length, mask = ptx_batch(tokenizer, examples[:3], "cpu")
    for row, messages in enumerate(conversations):
        real = batch["attention_mask"][row].bool()
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        expected = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        assert batch["input_ids"][row][real].tolist() == expected[: int(real.sum())]
        assert expected[int(real.sum()) - 1] == tokenizer.eos_token_id  # the answer ends at its EOS
        assert mask[row].sum() == real[query_length:].sum() == len(examples[row]["answer"])


def test_data_without_answers_or_too_long_is_reported(tokenizer, jsonl):
    with pytest.raises(UserError, match=r"ppo.ptx_data: .*data.jsonl line 1 fits no known format"):
        read_ptx(str(jsonl([{"prompt": "Why is the sky blue?"}])), tokenizer, max_length=512)
    with pytest.raises(UserError, match=r"text.jsonl line 1: ppo.ptx_data needs conversations that end in an"):
        read_ptx(str(jsonl([{"text": "Arr!"}], "text.jsonl")), tokenizer, max_length=512)
    with pytest.raises(UserError, match="every conversation is longer than data.max_length=8"):
        read_ptx("builtin:pirate_sft", tokenizer, max_length=8)
    _, line = read_ptx("builtin:pirate_sft", tokenizer, max_length=100)
    assert "longer than data.max_length: left out" in line


def test_ptx_coef_needs_ptx_data(rl_recipe):
    result = CliRunner().invoke(app, ["ppo", str(rl_recipe("ppo", ptx_coef=0.5))])
    assert result.exit_code == 2 and "ppo.ptx_coef is set but ppo.ptx_data is not" in result.output


def policy_nll(trainer, examples) -> float:
    batch, query_length, mask = ptx_batch(trainer.tokenizer, examples, "cpu")
    with torch.no_grad():
        logits, _ = trainer.model(**batch)
    return -masked_mean(response_logprobs(logits, batch, query_length, 1.0), mask).item()


def test_the_ptx_loss_makes_the_answers_likelier_and_is_reported(rl_recipe, ppo_trainer):
    def trained(coef: float):
        extra = {"ptx_coef": coef, "ptx_data": "builtin:pirate_sft"} if coef else {}
        trainer = ppo_trainer(rl_recipe("ppo", steps=5, batch_size=2, mini_batch_size=2, learning_rate=5e-3, **extra))
        return trainer, trainer.train()

    with_ptx, history = trained(10.0)
    assert all(0 < record["ptx_loss"] < float("inf") for record in history)
    without, plain_history = trained(0.0)
    assert "ptx_loss" not in plain_history[0]
    answers = with_ptx.ptx[:8]
    assert policy_nll(with_ptx, answers) < policy_nll(without, answers) - 0.2
