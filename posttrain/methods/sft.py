"""Supervised fine-tuning: a recipe mapped onto TRL's SFTTrainer with a 4-bit base and a LoRA adapter.

Conversational data trains on the assistant turns only (the chat templates mark them); raw `text` rows are
continued pretraining on every token. `train:` holds any SFTConfig field.
"""

from __future__ import annotations

from posttrain.data.prepare import PreparedData
from posttrain.methods.common import COMMON_TRAIN_DEFAULTS, Stage, prepare_method, trl_config, trl_trainer
from posttrain.recipe import Recipe

# posttrain's defaults under the recipe's `train:` (TRL's own defaults suit full fine-tuning, not LoRA).
TRAIN_DEFAULTS = COMMON_TRAIN_DEFAULTS | {"learning_rate": 2.0e-4}


def prepare(recipe: Recipe) -> tuple[Stage, PreparedData]:
    """Everything that can be checked without loading weights: model, precision, tokenizer, data."""
    stage, data = prepare_method(recipe, TRAIN_DEFAULTS)
    recipe.train.setdefault("assistant_only_loss", data.conversational)
    return stage, data


def build_trainer(stage: Stage, data: PreparedData):
    from trl import SFTConfig, SFTTrainer

    return trl_trainer(SFTTrainer, trl_config(SFTConfig, stage), stage, data)


def extra_metrics(trainer, stage: Stage, data: PreparedData) -> dict:
    return {}
