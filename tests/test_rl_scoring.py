"""PPO and rejection sampling read a reward run's score where RewardTrainer trained it: the same conversation
scores the same through `posttrain eval accuracy`'s path and through the RL path, for each chat template; and a
response cut off at max_new_tokens never gets the reward run's score of an unfinished text. Without a model: each
sampled row of a batch (prompts and replies of different lengths) is scored on exactly the tokens RewardTrainer saw
for its conversation, at its last token, with positions counted from its first real token."""

from dataclasses import replace

import pytest
import torch
import yaml

from posttrain.evaluation.scoring import score_conversations
from posttrain.inference.generation import encode_chats
from posttrain.method_sections import RSSection
from posttrain.methods import rs
from posttrain.models.loading import load_run_model, load_tokenizer
from posttrain.recipe import load_recipe
from posttrain.rl.sampling import reward_scores, samples_of
from posttrain.rl.setup import load_base_and_lora
from posttrain.rl.shared_model import SharedModel

PROMPT = [{"role": "user", "content": "What is 2 plus 2?"}]
REPLY = "Arr! Happy to help, the answer is four. Fair winds!"
BASES = {"llama2": "tiny-llama2", "chatml": "smollm2-135m"}  # tiny-llama2 has no ChatML tokens


@pytest.fixture(scope="module")
def reward_runs(tmp_path_factory, reward_pairs, reward_run):
    """A reward run per chat template (llama2 is the session's; chatml needs a base with its tokens)."""
    from posttrain.methods.common import run_method

    folder = tmp_path_factory.mktemp("chatml")
    recipe = {
        "method": "reward",
        "model": {"name": BASES["chatml"], "quantization": "none", "chat_template": "chatml"},
        "data": {"train": str(reward_pairs), "max_length": 192},
        "train": {
            "max_steps": 2,
            "per_device_train_batch_size": 2,
            "learning_rate": 3e-3,
            "activation_checkpointing": False,
            "report_to": "none",
        },
        "output_dir": str(folder / "reward"),
    }
    (folder / "reward.yaml").write_text("# posttrain reward reward.yaml\n" + yaml.safe_dump(recipe))
    run_method(load_recipe(str(folder / "reward.yaml")), echo=lambda _: None)
    return {"llama2": reward_run, "chatml": folder / "reward"}


def rl_scorer(tmp_path, template: str, reward, **settings):
    """The sampling model of an rs recipe on the bare base with `template`, its tokenizer and its settings."""
    recipe = {
        "method": "rs",
        "model": {"name": BASES[template], "quantization": "none", "chat_template": template},
        "data": {"train": "builtin:pirate_sft", "max_length": 192},
        "rs": {"reward": str(reward), "max_new_tokens": 8} | settings,
        "output_dir": str(tmp_path / "rs"),
    }
    path = tmp_path / "rs.yaml"
    path.write_text("# posttrain rs rs.yaml\n" + yaml.safe_dump(recipe))
    recipe = load_recipe(str(path))
    stage = rs.prepare(recipe, echo=lambda _: None)
    base, lora = load_base_and_lora(stage)
    return SharedModel.for_sampling(base, lora, None, stage.data.rewards).eval(), stage.tokenizer, recipe.rs


def rl_score(shared, tokenizer, settings, reply: str, cut: int = 0) -> float:
    """The RL path's score of PROMPT answered by `reply`, as if the policy had sampled the reply's tokens (up to
    and including its EOS, less the last `cut` of them)."""
    query = encode_chats(tokenizer, [PROMPT])
    text = tokenizer.apply_chat_template(PROMPT + [{"role": "assistant", "content": reply}], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    q = query["input_ids"].shape[1]
    assert torch.equal(ids[:, :q], query["input_ids"])  # the prompt tokenizes alike alone and in the conversation
    response = ids[:, q:]
    response = response[:, : (response[0] == tokenizer.eos_token_id).int().argmax() + 1 - cut]
    samples = samples_of(
        torch.cat([query["input_ids"], response], dim=1), query, tokenizer, [{"safety": False}], settings
    )
    return reward_scores(shared, samples, ["reward"], settings).item()


@pytest.mark.parametrize("template", ["llama2", "chatml"])
def test_rl_scoring_reads_the_score_where_reward_training_put_it(tmp_path, reward_runs, template):
    model, tokenizer = load_run_model(str(reward_runs[template]), task_type="SEQ_CLS")
    expected = score_conversations(model, tokenizer, [PROMPT + [{"role": "assistant", "content": REPLY}]])[0]
    shared, rl_tokenizer, settings = rl_scorer(tmp_path, template, reward_runs[template])
    assert rl_score(shared, rl_tokenizer, settings, REPLY) == pytest.approx(expected, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("template", ["llama2", "chatml"])
def test_a_cut_off_response_never_gets_the_reward_runs_score_of_unfinished_text(tmp_path, reward_runs, template):
    shared, tokenizer, settings = rl_scorer(tmp_path, template, reward_runs[template], truncated_score=-7.5)
    finished = rl_score(shared, tokenizer, settings, REPLY)
    assert rl_score(shared, tokenizer, settings, REPLY, cut=1) == -7.5  # truncated: fixed_score (the default)
    appended = replace(settings, truncated="append_eos")
    assert rl_score(shared, tokenizer, appended, REPLY, cut=1) == pytest.approx(finished, abs=1e-6)
    assert rl_score(shared, tokenizer, appended, REPLY, cut=3) != pytest.approx(finished, abs=1e-6)


# ---------------------------------------------------------------- what is scored, token by token (no model)


@pytest.fixture(scope="module")
def tokenizers(tiny_model):
    """tiny-llama2's tokenizer set up for llama2, and with the ChatML tokens added, for chatml."""
    from transformers import AutoTokenizer

    from posttrain.models.templates import CHATML_TOKENS, prepare_tokenizer

    chatml = AutoTokenizer.from_pretrained(tiny_model.tokenizer)
    chatml.add_tokens(list(CHATML_TOKENS), special_tokens=True)
    return {"llama2": load_tokenizer(tiny_model, "llama2"), "chatml": prepare_tokenizer(chatml, "chatml")}


QUESTIONS = ["Hi", "What is two plus two, matey?"]  # prompts of different lengths: the first is left-padded


def sampled(tokenizer, replies: list[list[int]], **settings):
    """Samples as generate() returns them for QUESTIONS, two replies each (`replies`: token ids, padded here)."""
    query = encode_chats(tokenizer, [[{"role": "user", "content": q}] for q in QUESTIONS])
    width = max(map(len, replies))
    responses = torch.tensor([reply + [tokenizer.pad_token_id] * (width - len(reply)) for reply in replies])
    output = torch.cat([query["input_ids"].repeat_interleave(2, dim=0), responses], dim=1)
    rows = [{"prompt": [{"role": "user", "content": q}], "safety": False} for q in QUESTIONS]
    return samples_of(output, query, tokenizer, rows, sampling(**settings), per_prompt=2), query


def sampling(**settings) -> RSSection:
    return RSSection(reward="reward", **settings)  # how responses are scored; no reward run is loaded


def reply_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def conversation_ids(tokenizer, question: str, reply: str) -> list[int]:
    """The conversation as RewardTrainer tokenizes it: what a reward run learned to score at its last token."""
    chat = [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    return tokenizer(tokenizer.apply_chat_template(chat, tokenize=False), add_special_tokens=False)["input_ids"]


class LastTokenJudge:
    """A reward run's interface that scores each sequence by the id of the token it is read at."""

    def scores(self, role, batch, index):
        return batch["input_ids"][torch.arange(len(index)), index].float()


def answer_ids(tokenizer, question: str, reply: str) -> list[int]:
    """The reply's tokens as the conversation holds them, through its EOS: what a policy samples to say `reply`."""
    prompt = encode_chats(tokenizer, [[{"role": "user", "content": question}]])["input_ids"][0].tolist()
    conversation = conversation_ids(tokenizer, question, reply)
    assert conversation[: len(prompt)] == prompt
    answer = conversation[len(prompt) :]
    return answer[: answer.index(tokenizer.eos_token_id) + 1]


@pytest.mark.parametrize("template", ["llama2", "chatml"])
def test_each_row_is_scored_as_reward_training_saw_its_conversation(tokenizers, template):
    tokenizer = tokenizers[template]
    eos = tokenizer.eos_token_id
    texts = ["Arr!", "Arr, four doubloons!", None, "Aye."]  # the third is cut off at max_new_tokens
    long = answer_ids(tokenizer, QUESTIONS[1], texts[1])
    cut = long[:-1] + long[:1]  # as long as the longest, no EOS
    replies = [answer_ids(tokenizer, QUESTIONS[row // 2], text) if text else cut for row, text in enumerate(texts)]
    samples, query = sampled(tokenizer, replies, truncated="append_eos")
    assert samples.has_eos.tolist() == [True, True, False, True]
    assert [row["prompt"][0]["content"] for row in samples.prompts] == [QUESTIONS[0]] * 2 + [QUESTIONS[1]] * 2
    batch, index = samples.scoring
    ending = [] if template == "llama2" else conversation_ids(tokenizer, "Hi", "Yo")[-1:]  # ChatML: the newline
    for row, text in enumerate(texts):
        real = batch["input_ids"][row][batch["attention_mask"][row] == 1].tolist()
        assert batch["position_ids"][row][batch["attention_mask"][row] == 1].tolist() == list(range(len(real)))
        assert batch["input_ids"][row, index[row]].item() == real[-1]  # the score is read at the last real token
        if text is not None:
            assert real == conversation_ids(tokenizer, QUESTIONS[row // 2], text)
        else:  # cut off, scored with EOS appended: the template's ending follows that EOS
            prompt = query["input_ids"][1][query["attention_mask"][1] == 1].tolist()
            assert real == prompt + cut + [eos] + ending


def test_each_response_is_masked_through_its_first_eos_and_positions_start_at_its_prompt(tokenizers):
    tokenizer = tokenizers["llama2"]
    eos, tokens = tokenizer.eos_token_id, reply_ids(tokenizer, "Arr, four doubloons!")[:5]
    # a tokenizer whose pad token is its EOS pads finished responses with more EOS tokens
    replies = [tokens[:2] + [eos, eos, eos], tokens, [eos] * 5, tokens[:1] + [eos]]
    samples, query = sampled(tokenizer, replies)
    assert samples.response_mask.tolist() == [
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
    ]
    assert samples.has_eos.tolist() == [True, False, True, True]
    prompt_lengths = query["attention_mask"].sum(dim=1).repeat_interleave(2).tolist()
    for row, (prompt, response) in enumerate(
        zip(prompt_lengths, samples.response_mask.sum(dim=1).tolist(), strict=True)
    ):
        attention = samples.batch["attention_mask"][row]
        assert attention.sum().item() == prompt + response
        assert samples.batch["position_ids"][row][attention == 1].tolist() == list(range(prompt + response))


@pytest.mark.parametrize("template", ["llama2", "chatml"])
def test_only_a_cut_off_response_gets_the_fixed_score(tokenizers, template):
    tokenizer = tokenizers[template]
    eos, tokens = tokenizer.eos_token_id, reply_ids(tokenizer, "Arr, four doubloons!")
    samples, _ = sampled(tokenizer, [tokens[:2] + [eos], tokens[:4], [eos], tokens[1:5]], truncated_score=-7.5)
    scores = reward_scores(LastTokenJudge(), samples, ["reward"], sampling(truncated_score=-7.5))
    last_token = reply_ids(tokenizer, "\n")[-1] if template == "chatml" else eos  # what each finished one ends with
    assert scores.tolist() == [last_token, -7.5, last_token, -7.5]
