"""Reward modelling (Llama 2 / InstructGPT step 2): TRL's RewardTrainer on binary comparisons.

A one-output score head on the 4-bit base, with LoRA; the head trains in full and is saved with the adapter.
The loss is TRL's, -log sigmoid(r_chosen - r_rejected - margin), with margins from a margin column or from
Llama 2 preference-strength labels (`reward.margins`). metrics.json reports accuracy on the eval pairs.
"""

from __future__ import annotations

from collections.abc import Callable

from posttrain.evaluation.scoring import accuracy_report, score_conversations
from posttrain.methods.common import Stage
from posttrain.methods.train_defaults import COMMON_TRAIN_DEFAULTS
from posttrain.methods.trl_backed import (
    prepare_with_data,
    train_and_finish,
    trl_config,
    trl_trainer,
)
from posttrain.recipe import Recipe

TRAIN_DEFAULTS = COMMON_TRAIN_DEFAULTS | {"learning_rate": 1.0e-4}


def prepare(recipe: Recipe, echo: Callable[[str], None] = print) -> Stage:
    return prepare_with_data(recipe, TRAIN_DEFAULTS, preference=True, margins=recipe.reward.margin_table())


def build_trainer(stage: Stage):
    from trl import RewardConfig, RewardTrainer

    return trl_trainer(RewardTrainer, trl_config(RewardConfig, stage), stage, task_type="SEQ_CLS")


def train(stage: Stage, *, resume: bool, echo: Callable[[str], None] = print) -> dict:
    trainer = build_trainer(stage)
    return train_and_finish(stage, trainer, resume=resume, extra_metrics=lambda: held_out_accuracy(trainer, stage))


def held_out_accuracy(trainer, stage: Stage) -> dict:
    """Accuracy on the eval pairs, scored as `posttrain eval accuracy` scores them."""
    pairs = stage.data.eval
    if not pairs:
        return {}
    chosen = score_conversations(trainer.model, stage.tokenizer, [e["prompt"] + e["chosen"] for e in pairs])
    rejected = score_conversations(trainer.model, stage.tokenizer, [e["prompt"] + e["rejected"] for e in pairs])
    return {"reward_accuracy": accuracy_report(pairs, chosen, rejected)}
