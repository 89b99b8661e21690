"""ORPO: instruction tuning and preference alignment in one stage, straight from a base model.

TRL's experimental ORPOTrainer (imported via posttrain.trl_compat) on a 4-bit base with LoRA; no reference model.
"""

from __future__ import annotations

from posttrain.data.prepare import PreparedData, prepare_data
from posttrain.methods.common import (
    COMMON_TRAIN_DEFAULTS,
    Stage,
    datasets_of,
    load_trainable_model,
    prepare_stage,
    resolve_train_settings,
    tensorboard_callbacks,
    trl_config,
)
from posttrain.recipe import Recipe

# ORPO's collator needs the raw columns it tokenizes itself.
TRAIN_DEFAULTS = COMMON_TRAIN_DEFAULTS | {"learning_rate": 1.0e-4, "remove_unused_columns": False}


def prepare(recipe: Recipe) -> tuple[Stage, PreparedData]:
    stage = prepare_stage(recipe)
    data = prepare_data(
        recipe.data, stage.tokenizer, seed=recipe.train.get("seed", TRAIN_DEFAULTS["seed"]), preference=True
    )
    resolve_train_settings(recipe, TRAIN_DEFAULTS)
    return stage, data


def build_trainer(stage: Stage, data: PreparedData):
    from posttrain.trl_compat import ORPOConfig, ORPOTrainer

    config = trl_config(ORPOConfig, stage)
    return ORPOTrainer(
        model=load_trainable_model(stage),
        args=config,
        processing_class=stage.tokenizer,
        callbacks=tensorboard_callbacks(config, stage.run.logs),
        **datasets_of(data),
    )


def extra_metrics(trainer, stage: Stage, data: PreparedData) -> dict:
    return {}
