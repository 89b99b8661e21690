"""PPO and rejection sampling read a reward run's score where RewardTrainer trained it: the same conversation
scores the same through `posttrain eval accuracy`'s path and through the RL path, for each chat template; and a
response cut off at max_new_tokens never gets the reward run's score of an unfinished text."""

from dataclasses import replace

import pytest
import torch
import yaml

from posttrain.evaluation.scoring import score_conversations
from posttrain.inference.generation import encode_chats
from posttrain.methods import rs
from posttrain.models.loading import load_run_model
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
