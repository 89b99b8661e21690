"""Supervised fine-tuning: a recipe mapped onto TRL's SFTTrainer with a 4-bit base and a LoRA adapter.

Conversational data trains on the assistant turns only (the chat templates mark them); raw `text` rows are
continued pretraining on every token. `train:` holds any SFTConfig field.

Batches are padding-free by default (TRL's `padding_free`): a batch's rows are laid end to end in one row whose
position ids restart at each row, and attention stays within each row (transformers builds that mask from the
position ids), so each row's loss is what it would be alone and no compute goes to padding. Only when rows must be
truncated (data.on_too_long: truncate) do batches stay padded, since TRL truncates only padded batches.
"""

from __future__ import annotations

from collections.abc import Callable

from posttrain.errors import UserError
from posttrain.methods.common import Stage
from posttrain.methods.train_defaults import COMMON_TRAIN_DEFAULTS
from posttrain.methods.trl_backed import (
    padding_line,
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
    truncates = stage.data.report.action == "truncate" and stage.data.report.too_long > 0
    if recipe.train.setdefault("padding_free", not truncates) and truncates:
        raise UserError(
            "train.padding_free cannot truncate rows, and some are longer than data.max_length: set "
            "data.on_too_long: drop, or train.padding_free: false."
        )
    batch = recipe.train["per_device_train_batch_size"]
    stage.details.append(padding_line(stage.data, batch, recipe.train["padding_free"]))
    return stage


def build_trainer(stage: Stage):
    from trl import SFTConfig, SFTTrainer

    config = trl_config(SFTConfig, stage)
    if config.padding_free and not config.packing:
        config.max_length = None  # every row already fits (prepare); TRL refuses padding-free rows with a limit
    return trl_trainer(SFTTrainer, config, stage)


def train(stage: Stage, *, resume: bool, echo: Callable[[str], None] = print) -> dict:
    return train_and_finish(stage, build_trainer(stage), resume=resume)
