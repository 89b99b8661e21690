"""grpo on tiny-llama2: every kind of reward (built-in checks, a user's function, a reward run on the policy's own
base), the mistakes in a reward spec that exit 2, what trains and what stays frozen, and the run loading like any
other."""

import json

import pytest
import torch
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.data.sources import read_rows
from posttrain.methods.common import run_method
from posttrain.recipe import load_recipe
from posttrain.rl.rewards import exact_match, max_words, regex

SMALL = {
    "max_steps": 2,
    "per_device_train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "num_generations": 4,
    "max_completion_length": 12,
}


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def grpo_recipe(write_recipe, rewards: list, train: dict | None = None, **sections):
    data = {"train": "builtin:arithmetic", "max_length": 96}
    return write_recipe(
        "grpo.yaml", method="grpo", data=data, grpo={"rewards": rewards}, train=SMALL | (train or {}), **sections
    )


def answers(*texts):
    return [[{"role": "assistant", "content": text}] for text in texts]


def test_builtin_rewards_check_length_format_and_the_answer_column():
    completions = answers("12", "It is 12 matey", " 11 ")
    assert max_words(1)(completions) == [1.0, 0.0, 1.0]
    assert regex(r"^\s*\d+\s*$", "key")(completions) == [1.0, 0.0, 1.0]
    assert exact_match("answer")(completions, answer=["12", "12", "11"]) == [1.0, 0.0, 1.0]


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(
        "def longer(prompts, completions, **kwargs):\n"
        "    return [len(c[0]['content']) / 10 for c in completions]\n"
        "def broken(prompts, completions, **kwargs):\n"
        "    raise KeyError('score')\n"
    )
    return path


def test_grpo_runs_through_the_cli_and_its_run_loads_in_generate_and_merge(write_recipe, reward_file, jsonl, tmp_path):
    rewards = [{"max_words": 3}, {"regex": "^\\d+$", "weight": 0.5}, {"exact_match": "answer"}]
    rewards.append({"function": f"{reward_file}:longer", "weight": 0.1})
    result = invoke("grpo", grpo_recipe(write_recipe, rewards))
    assert result.exit_code == 0, result.output
    assert "rewards     max_words 3; regex ^\\d+$ (weight 0.5); exact_match answer; function" in result.output
    assert "mean reward" in result.output
    run = tmp_path / "run"
    logged = json.loads((run / "metrics.json").read_text())["log_history"][0]
    assert {"rewards/max_words_3/mean", "rewards/exact_match_answer/mean", "rewards/longer/mean"} <= set(logged)
    prompts = jsonl([{"prompt": "What is 2 plus 2?"}], "prompts.jsonl")
    replies = tmp_path / "replies.jsonl"
    generated = invoke("generate", run, "--prompts", prompts, "--output", replies, "--max-new-tokens", "4")
    assert generated.exit_code == 0, generated.output
    assert len(read_rows(str(replies))) == 1
    merged = invoke("merge", run, "--output", tmp_path / "merged")
    assert merged.exit_code == 0, merged.output


def test_policy_weights_change_and_the_base_and_reward_adapter_do_not(write_recipe, reward_run):
    recipe = grpo_recipe(
        write_recipe,
        [{"run": str(reward_run)}, {"max_words": 4}],
        train={"learning_rate": 1e-2, "max_steps": 3},  # step 1 warms up at 0; LoRA's A moves once B has
        model={"quantization": "nf4"},
    )
    seen = {}

    def snapshot(trainer):
        seen["trainer"] = trainer
        seen["before"] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}

    run_method(load_recipe(str(recipe)), echo=lambda _: None, before_train=snapshot)
    after, before = dict(seen["trainer"].model.named_parameters()), seen["before"]
    trainable = [n for n, p in after.items() if p.requires_grad]
    frozen = [n for n, p in after.items() if not p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)
    assert [n for n in trainable if torch.equal(before[n], after[n])] == []
    assert any(".reward_0." in n for n in frozen)  # the reward run's adapter on the same base
    assert [n for n in frozen if not torch.equal(before[n], after[n])] == []


def test_a_reward_run_on_the_policy_base_scores_as_the_run_loaded_on_its_own(reward_run):
    from peft import get_peft_model

    from posttrain.evaluation.scoring import score_conversations
    from posttrain.models.loading import load_base_model, load_run_model, lora_config, resolve_model
    from posttrain.rl.rewards import RewardRunScore
    from posttrain.sections import LoraSection

    model, tokenizer = load_run_model(str(reward_run), task_type="SEQ_CLS")
    prompts = [[{"role": "user", "content": "What is 2 plus 2?"}]] * 2
    completions = answers("Arr! Happy to help, the answer is four.", "Go away, landlubber.")
    alone = score_conversations(model, tokenizer, [p + c for p, c in zip(prompts, completions, strict=True)])

    base = load_base_model(resolve_model("tiny-llama2"), "none", True, "fp32")
    policy = get_peft_model(base, lora_config(LoraSection()))
    shared = RewardRunScore(policy, reward_run / "adapter", "reward_0", tokenizer, "fp32")
    assert shared(prompts, completions) == pytest.approx(alone, abs=1e-4)
    assert policy.active_adapters == ["default"]
    assert all(p.requires_grad == (".default." in n) for n, p in policy.named_parameters() if "lora_" in n)


def test_a_reward_run_scores_under_the_training_autocast(reward_run):
    """TRL calls reward functions outside its autocast; a reward run must score as it trained (fp16 on a T4)."""
    from peft import get_peft_model
    from transformers import AutoTokenizer

    from posttrain.models.loading import load_base_model, lora_config, resolve_model
    from posttrain.rl.rewards import RewardRunScore
    from posttrain.sections import LoraSection

    tokenizer = AutoTokenizer.from_pretrained(reward_run)
    base = load_base_model(resolve_model("tiny-llama2"), "none", True, "fp32")
    policy = get_peft_model(base, lora_config(LoraSection()))
    shared = RewardRunScore(policy, reward_run / "adapter", "reward_0", tokenizer, "bf16")
    seen = []  # the autocast dtype each decoder layer ran under (None: no autocast)

    def record(*_):
        seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None)

    policy.base_model.model.model.layers[0].register_forward_hook(record)
    scores = shared([[{"role": "user", "content": "What is 2 plus 2?"}]], answers("Four."))
    assert seen == [torch.bfloat16] and len(scores) == 1 and isinstance(scores[0], float)


@pytest.mark.parametrize(
    ("reward", "message"),
    [
        ({"function": "nowhere/rewards.py:score"}, "grpo.rewards[0]: reward file not found: nowhere/rewards.py"),
        ({"function": "REWARDS:missing"}, "has no function 'missing'"),
        ({"function": "no_such_module_xyz:score"}, "cannot import module 'no_such_module_xyz'"),
        ({"function": "score"}, "should be path/to/file.py:function or module:function"),
        ({"regex": "(unclosed"}, "is not a valid regular expression"),
        ({"exact_match": "solution"}, "compares with the 'solution' column, which the prompts do not have"),
        ({"max_words": 0}, "grpo.rewards[0].max_words: expected a whole number of words above 0"),
        ({"regex": "x", "max_words": 3}, "give exactly one of"),
        ({"run": "tiny-llama2"}, "grpo.rewards[0].run: tiny-llama2 is not a reward run"),
    ],
)
def test_a_bad_reward_spec_exits_2_naming_it(write_recipe, reward_file, reward, message):
    reward = {k: v.replace("REWARDS", str(reward_file)) if isinstance(v, str) else v for k, v in reward.items()}
    result = invoke("grpo", grpo_recipe(write_recipe, [reward]), "--dry-run")
    assert result.exit_code == 2, result.output
    assert message in result.output.replace("\n", " ")
    assert "Traceback" not in result.output


def test_a_reward_function_that_raises_exits_2_naming_it(write_recipe, reward_file):
    result = invoke("grpo", grpo_recipe(write_recipe, [{"function": f"{reward_file}:broken"}]))
    assert result.exit_code == 2, result.output
    assert f"grpo.rewards[0] ({reward_file}:broken) raised KeyError: 'score'" in result.output.replace("\n", "")


def test_reward_weights_are_given_per_reward_not_in_train(write_recipe):
    result = invoke("grpo", grpo_recipe(write_recipe, [{"max_words": 3}], train={"reward_weights": [1.0]}), "--dry-run")
    assert result.exit_code == 2 and "give each reward a weight in grpo.rewards" in result.output
