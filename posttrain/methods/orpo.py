"""ORPO: instruction tuning and preference alignment in one stage, straight from a base model.

TRL's experimental ORPOTrainer (imported via posttrain.trl_compat) on a 4-bit base with LoRA; no reference model.
"""

from __future__ import annotations

from posttrain.data.prepare import PreparedData
from posttrain.methods.common import COMMON_TRAIN_DEFAULTS, Stage, prepare_method, trl_config, trl_trainer
from posttrain.recipe import Recipe

# ORPO's collator needs the raw columns it tokenizes itself.
TRAIN_DEFAULTS = COMMON_TRAIN_DEFAULTS | {"learning_rate": 1.0e-4, "remove_unused_columns": False}


def prepare(recipe: Recipe) -> tuple[Stage, PreparedData]:
    return prepare_method(recipe, TRAIN_DEFAULTS, preference=True)


def build_trainer(stage: Stage, data: PreparedData):
    from posttrain.trl_compat import ORPOConfig, ORPOTrainer

    return trl_trainer(ORPOTrainer, trl_config(ORPOConfig, stage), stage, data)


def extra_metrics(trainer, stage: Stage, data: PreparedData) -> dict:
    return {}
