"""KTO (Kahneman-Tversky optimisation): TRL's KTOTrainer on a 4-bit base with LoRA, learning from unpaired
feedback, single answers marked desirable or undesirable (thumbs-up/down logs), instead of pairs.

From an SFT run (model.name or model.adapter), training continues that run's adapter and the reference is a frozen
copy of it (TRL copies a pre-loaded adapter into a "ref" adapter), as in dpo. `train.beta`, `train.loss_type`,
`train.desirable_weight` and `train.undesirable_weight` are KTOConfig's own; the plan says when the balance of
desirable and undesirable rows calls for the weights (posttrain.data.feedback).
"""

from __future__ import annotations

from collections.abc import Callable

from posttrain.data.feedback import balance_lines
from posttrain.errors import UserError
from posttrain.methods.common import Stage
from posttrain.methods.train_defaults import COMMON_TRAIN_DEFAULTS
from posttrain.methods.trl_backed import (
    prepare_with_data,
    train_and_finish,
    trl_config,
    trl_trainer,
)
from posttrain.recipe import Recipe

TRAIN_DEFAULTS = COMMON_TRAIN_DEFAULTS | {"learning_rate": 5.0e-5}


def prepare(recipe: Recipe, echo: Callable[[str], None] = print) -> Stage:
    stage = prepare_with_data(recipe, TRAIN_DEFAULTS)
    train = recipe.train
    if train["per_device_train_batch_size"] < 2 and train.get("loss_type", "kto") == "kto":
        raise UserError(
            "KTO estimates its KL term from the other answers of a batch: set train.per_device_train_batch_size "
            "to 2 or more (use gradient_accumulation_steps to keep the memory down)."
        )
    weights = train.get("desirable_weight", 1.0), train.get("undesirable_weight", 1.0)
    stage.details += balance_lines(stage.data.train, *weights)
    return stage


def train(stage: Stage, *, resume: bool, echo: Callable[[str], None] = print) -> dict:
    from trl import KTOConfig, KTOTrainer

    # ref_model=None: the reference is the starting adapter (or the base), see the module docstring
    trainer = trl_trainer(KTOTrainer, trl_config(KTOConfig, stage), stage, ref_model=None)
    reference = f"the starting adapter of {stage.adapter.parent}" if stage.adapter else "the base model"
    return train_and_finish(stage, trainer, resume=resume, extra_metrics=lambda: {"reference_model": reference})
