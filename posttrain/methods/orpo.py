"""ORPO: instruction tuning and preference alignment in one stage, straight from a base model.

TRL's experimental ORPOTrainer (imported via posttrain.trl_compat) on a 4-bit base with LoRA; no reference model.
"""

from __future__ import annotations

from collections.abc import Callable

from posttrain.methods.common import Stage
from posttrain.methods.train_defaults import COMMON_TRAIN_DEFAULTS
from posttrain.methods.trl_backed import (
    prepare_with_data,
    train_and_finish,
    trl_config,
    trl_trainer,
)
from posttrain.recipe import Recipe

# ORPO's collator needs the raw columns it tokenizes itself.
TRAIN_DEFAULTS = COMMON_TRAIN_DEFAULTS | {"learning_rate": 1.0e-4, "remove_unused_columns": False}


def prepare(recipe: Recipe, echo: Callable[[str], None] = print) -> Stage:
    return prepare_with_data(recipe, TRAIN_DEFAULTS, preference=True)


def train(stage: Stage, *, resume: bool, echo: Callable[[str], None] = print) -> dict:
    from posttrain.trl_compat import ORPOConfig, ORPOTrainer

    return train_and_finish(stage, trl_trainer(ORPOTrainer, trl_config(ORPOConfig, stage), stage), resume=resume)
