"""Direct preference optimisation: TRL's DPOTrainer on a 4-bit base with LoRA.

From an SFT run (model.name or model.adapter), training continues that run's adapter and the reference is a
frozen copy of it, the SFT model itself (TRL copies a pre-loaded adapter into a "ref" adapter), so the first
step's loss is ln 2 and the implicit rewards start at 0. From a base model, the reference is the base.
`train.beta` and `train.loss_type` are DPOConfig's own.
"""

from __future__ import annotations

from posttrain.data.prepare import PreparedData
from posttrain.methods.common import COMMON_TRAIN_DEFAULTS, Stage, prepare_method, trl_config, trl_trainer
from posttrain.recipe import Recipe

TRAIN_DEFAULTS = COMMON_TRAIN_DEFAULTS | {"learning_rate": 5.0e-5}


def prepare(recipe: Recipe) -> tuple[Stage, PreparedData]:
    return prepare_method(recipe, TRAIN_DEFAULTS, preference=True)


def build_trainer(stage: Stage, data: PreparedData):
    from trl import DPOConfig, DPOTrainer

    # ref_model=None: the reference is the starting adapter (or the base), see the module docstring
    return trl_trainer(DPOTrainer, trl_config(DPOConfig, stage), stage, data, ref_model=None)


def extra_metrics(trainer, stage: Stage, data: PreparedData) -> dict:
    reference = f"the starting adapter of {stage.adapter.parent}" if stage.adapter else "the base model"
    return {"reference_model": reference}
