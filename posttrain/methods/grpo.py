"""GRPO (group relative policy optimisation): TRL's GRPOTrainer on a 4-bit base with LoRA. For each prompt it
samples train.num_generations answers, scores them with the recipe's rewards (grpo.rewards: built-in checks, your
functions, reward runs; posttrain.rl.rewards), and pushes up the answers that beat their group's mean. No value
network, and no reference model unless train.beta is above 0 (then a frozen copy of the starting adapter).

Generation runs with transformers on the 4-bit base (vLLM does not load bitsandbytes weights on a T4; TRL's vllm
options still pass through `train:`). num_generations, beta, loss_type and the rest are GRPOConfig's own; each
reward's weight becomes GRPOConfig.reward_weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.data.prepare import PreparedData, split_indices
from posttrain.data.prompts import read_prompts, too_long_message
from posttrain.errors import UserError
from posttrain.methods.common import Stage, prepare_stage
from posttrain.methods.train_defaults import GRPO_TRAIN_DEFAULTS
from posttrain.methods.trl_backed import (
    train_and_finish,
    trainable_model,
    trl_config,
    trl_trainer,
)
from posttrain.recipe import Recipe
from posttrain.rl.rewards import check_reward, describe, reward_functions
from posttrain.rl.setup import check_reward_run

TRAIN_DEFAULTS = GRPO_TRAIN_DEFAULTS
LOGGED_REWARD = "reward"  # TRL's log key of the weighted reward, averaged over the step's answers


@dataclass
class GRPOData(PreparedData):
    rewards: list = field(default_factory=list)  # one reward function per grpo.rewards entry; None for a run
    reward_runs: dict[int, Path] = field(default_factory=dict)  # entry index -> the reward run's adapter


def prepare(recipe: Recipe, echo: Callable[[str], None] = print) -> Stage:
    if "reward_weights" in recipe.train:
        raise UserError(
            "recipe key train.reward_weights is set by posttrain: give each reward a weight in grpo.rewards."
        )
    stage = prepare_stage(recipe)
    recipe.train = TRAIN_DEFAULTS | recipe.train
    completion = recipe.train["max_completion_length"]
    train = prompts_that_fit(recipe.data.train, stage.tokenizer, recipe, completion, echo)
    evaluation = (
        prompts_that_fit(recipe.data.eval, stage.tokenizer, recipe, completion, echo) if recipe.data.eval else []
    )
    if recipe.data.eval_fraction:
        kept, held = split_indices(len(train), recipe.data.eval_fraction, recipe.train["seed"])
        train, evaluation = [train[i] for i in kept], [train[i] for i in held]
    columns = set.intersection(*(set(row) for row in train))
    entries = recipe.grpo.rewards
    keys = [f"grpo.rewards[{index}]" for index in range(len(entries))]
    checked = [check_reward(entry, key, columns) for entry, key in zip(entries, keys, strict=True)]
    runs = {
        index: check_reward_run(entry["run"], stage, f"{keys[index]}.run")
        for index, entry in enumerate(entries)
        if "run" in entry
    }
    stage.data = GRPOData("prompts", train, evaluation, rewards=checked, reward_runs=runs)
    stage.details = [
        f"prompts     {len(train)} from {recipe.data.train}" + (f", {len(evaluation)} held out" if evaluation else ""),
        f"rewards     {'; '.join(describe(entry) for entry in entries)}",
        f"grpo        {recipe.train['num_generations']} answers per prompt (max_completion_length {completion}), "
        f"beta {recipe.train.get('beta', 0.0):g}, loss {recipe.train.get('loss_type', 'dapo')}",
    ]
    return stage


def prompts_that_fit(source: str, tokenizer, recipe: Recipe, completion: int, echo: Callable[[str], None]) -> list:
    """The source's prompts (with their other columns) that leave max_completion_length tokens of data.max_length;
    longer ones are dropped and reported (data.on_too_long: drop) or refused."""
    limit = recipe.data.max_length - completion
    if limit < 8:
        raise UserError(
            f"data.max_length ({recipe.data.max_length}) leaves no room for prompts after "
            f"train.max_completion_length ({completion}); raise data.max_length."
        )
    prompts, too_long = read_prompts(source, tokenizer, limit, columns=True)
    rows = [{k: v for k, v in p.items() if k != "safety"} for p in prompts]
    if not too_long:
        return rows
    message = too_long_message(list(too_long.values()), len(prompts), limit, "data.max_length - max_completion_length")
    if recipe.data.on_too_long != "drop" or len(too_long) == len(prompts):
        raise UserError(
            f"{message} To use them, raise data.max_length or lower train.max_completion_length; to leave them out, "
            "set data.on_too_long: drop."
        )
    echo(f"data        {message.removesuffix('.')}: dropped (data.on_too_long: drop)")
    return [row for index, row in enumerate(rows) if index not in too_long]


def train(stage: Stage, *, resume: bool, echo: Callable[[str], None] = print) -> dict:
    from trl import GRPOConfig, GRPOTrainer

    config = trl_config(GRPOConfig, stage)
    config.reward_weights = [float(entry.get("weight", 1.0)) for entry in stage.recipe.grpo.rewards]
    model = trainable_model(stage, config)
    functions = reward_functions(stage.data.rewards, stage.data.reward_runs, model, stage.tokenizer, stage.precision)
    trainer = trl_trainer(GRPOTrainer, config, stage, model=model, reward_funcs=functions)
    return train_and_finish(stage, trainer, resume=resume, extra_metrics=lambda: reward_trend(trainer))


def reward_trend(trainer) -> dict:
    """The mean reward over the first and the last (up to) three logged steps: did the policy get better?"""
    logged = [entry[LOGGED_REWARD] for entry in trainer.state.log_history if LOGGED_REWARD in entry]
    if not logged:
        return {}
    span = min(3, len(logged))
    return {"mean_reward": {"first": sum(logged[:span]) / span, "last": sum(logged[-span:]) / span}}
