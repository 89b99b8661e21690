"""Supervised fine-tuning: a recipe mapped onto TRL's SFTTrainer with a 4-bit base and a LoRA adapter.

Conversational data trains on the assistant turns only (the chat templates mark them); raw `text` rows are
continued pretraining on every token. `train:` holds any SFTConfig field.
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

# posttrain's defaults under the recipe's `train:` (TRL's own defaults suit full fine-tuning, not LoRA).
TRAIN_DEFAULTS = COMMON_TRAIN_DEFAULTS | {"learning_rate": 2.0e-4}


def prepare(recipe: Recipe) -> tuple[Stage, PreparedData]:
    """Everything that can be checked without loading weights: model, precision, tokenizer, data."""
    stage = prepare_stage(recipe)
    data = prepare_data(recipe.data, stage.tokenizer, seed=recipe.train.get("seed", TRAIN_DEFAULTS["seed"]))
    resolve_train_settings(recipe, TRAIN_DEFAULTS | {"assistant_only_loss": data.conversational})
    return stage, data


def build_trainer(stage: Stage, data: PreparedData):
    from trl import SFTConfig, SFTTrainer

    config = trl_config(SFTConfig, stage)
    return SFTTrainer(
        model=load_trainable_model(stage),
        args=config,
        processing_class=stage.tokenizer,
        callbacks=tensorboard_callbacks(config, stage.run.logs),
        **datasets_of(data),
    )


def extra_metrics(trainer, stage: Stage, data: PreparedData) -> dict:
    return {}
