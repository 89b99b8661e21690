"""Supervised fine-tuning: a recipe mapped onto TRL's SFTTrainer with a 4-bit base and a LoRA adapter.

Conversational data trains on the assistant turns only (the chat templates mark them); raw `text` rows are
continued pretraining on every token. `train:` holds any SFTConfig field.
"""

from __future__ import annotations

from collections.abc import Callable

from posttrain.methods.common import Stage
from posttrain.methods.trl_backed import (
    COMMON_TRAIN_DEFAULTS,
    prepare_with_data,
    train_and_finish,
    trl_config,
    trl_trainer,
)
from posttrain.recipe import Recipe

# posttrain's defaults under the recipe's `train:` (TRL's own defaults suit full fine-tuning, not LoRA).
TRAIN_DEFAULTS = COMMON_TRAIN_DEFAULTS | {"learning_rate": 2.0e-4}


def prepare(recipe: Recipe, echo: Callable[[str], None] = print) -> Stage:
    """Everything that can be checked without loading weights: model, precision, tokenizer, data."""
    stage = prepare_with_data(recipe, TRAIN_DEFAULTS)
    recipe.train.setdefault("assistant_only_loss", stage.data.conversational)
    return stage


def build_trainer(stage: Stage):
    from trl import SFTConfig, SFTTrainer

    return trl_trainer(SFTTrainer, trl_config(SFTConfig, stage), stage)


def train(stage: Stage, *, resume: bool, echo: Callable[[str], None] = print) -> dict:
    return train_and_finish(stage, build_trainer(stage), resume=resume)
