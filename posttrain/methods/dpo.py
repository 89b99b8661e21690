"""Direct preference optimisation: TRL's DPOTrainer on a 4-bit base with LoRA.

From an SFT run (model.name or model.adapter), training continues that run's adapter and the reference is a
frozen copy of it, the SFT model itself (TRL copies a pre-loaded adapter into a "ref" adapter), so the first
step's loss is ln 2 and the implicit rewards start at 0. From a base model, the reference is the base.
`train.beta` and `train.loss_type` are DPOConfig's own.
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

TRAIN_DEFAULTS = COMMON_TRAIN_DEFAULTS | {"learning_rate": 5.0e-5}


def prepare(recipe: Recipe, echo: Callable[[str], None] = print) -> Stage:
    return prepare_with_data(recipe, TRAIN_DEFAULTS, preference=True)


def train(stage: Stage, *, resume: bool, echo: Callable[[str], None] = print) -> dict:
    from trl import DPOConfig, DPOTrainer

    # ref_model=None: the reference is the starting adapter (or the base), see the module docstring
    trainer = trl_trainer(DPOTrainer, trl_config(DPOConfig, stage), stage, ref_model=None)
    reference = f"the starting adapter of {stage.adapter.parent}" if stage.adapter else "the base model"
    return train_and_finish(stage, trainer, resume=resume, extra_metrics=lambda: {"reference_model": reference})
