"""Supervised fine-tuning: a recipe mapped onto TRL's SFTTrainer with a 4-bit base and a LoRA adapter.

Conversational data trains on the assistant turns only (the chat templates mark them); raw `text` rows are
continued pretraining on every token. `train:` holds any SFTConfig field.
"""

from __future__ import annotations

from collections.abc import Callable

from posttrain.data.prepare import PreparedData, prepare_sft_data
from posttrain.methods.common import (
    Stage,
    load_trainable_model,
    prepare_stage,
    start_run,
    tensorboard_callbacks,
    train_and_finish,
)
from posttrain.precision import trainer_flags
from posttrain.recipe import Recipe

# posttrain's defaults under the recipe's `train:` (TRL's own defaults suit full fine-tuning, not LoRA).
SFT_DEFAULTS = {
    "learning_rate": 2.0e-4,
    "per_device_train_batch_size": 4,
    "num_train_epochs": 1,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.03,
    "logging_steps": 5,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 2,
    "report_to": ["tensorboard"],
    "seed": 42,
}


def prepare(recipe: Recipe) -> tuple[Stage, PreparedData]:
    """Everything that can be checked without loading weights: model, precision, tokenizer, data."""
    stage = prepare_stage(recipe)
    seed = recipe.train.get("seed", SFT_DEFAULTS["seed"])
    data = prepare_sft_data(recipe.data, stage.tokenizer, seed)
    # Resolve the train settings once, so recipe.yaml in the run folder shows what was really used.
    recipe.train = SFT_DEFAULTS | {"assistant_only_loss": data.conversational} | recipe.train
    return stage, data


def build_trainer(stage: Stage, data: PreparedData):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    config = SFTConfig(
        output_dir=str(stage.run.checkpoints),
        max_length=stage.recipe.data.max_length,
        **trainer_flags(stage.precision, stage.hardware),
        **stage.recipe.train,
    )
    callbacks = tensorboard_callbacks(config, stage.run.logs)
    return SFTTrainer(
        model=load_trainable_model(stage),
        args=config,
        train_dataset=Dataset.from_list(data.train),
        eval_dataset=Dataset.from_list(data.eval) if data.eval else None,
        processing_class=stage.tokenizer,
        callbacks=callbacks,
    )


def data_metrics(data: PreparedData) -> dict:
    report = data.report
    return {
        "data": {
            "format": data.format,
            "train_rows": len(data.train),
            "eval_rows": len(data.eval),
            "too_long": report.too_long,
            "on_too_long": report.action,
        }
    }


def run(
    recipe: Recipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
    before_train: Callable | None = None,
) -> dict | None:
    """`posttrain sft`: check everything, print the plan, then train and write the run folder."""
    stage, data = prepare(recipe)
    stage.run.check_writable(resume=resume, overwrite=overwrite)
    for line in stage.plan_lines() + describe_data(data):
        echo(line)
    if dry_run:
        echo("dry run: recipe, model and data are valid; no weights were loaded and nothing was written.")
        return None
    start_run(stage, resume=resume, overwrite=overwrite)
    trainer = build_trainer(stage, data)
    if before_train is not None:
        before_train(trainer)
    return train_and_finish(stage, trainer, resume=resume, extra_metrics=data_metrics(data))


def describe_data(data: PreparedData) -> list[str]:
    loss = "assistant turns only" if data.conversational else "every token (continued pretraining)"
    lines = [f"data        {data.format}: {len(data.train)} train rows, {len(data.eval)} eval rows; loss on {loss}"]
    return lines + data.report.lines()
