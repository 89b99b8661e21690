"""What the methods backed by a TRL trainer share (sft, reward, dpo, orpo, kto, grpo, and rs's fine-tuning rounds):
data preparation, the TRL config from the recipe, the trainer on the 4-bit base, and the run's end (adapter,
tokenizer, metrics.json)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from posttrain.data.padding import PaddingMeter, padded_fraction
from posttrain.data.prepare import PreparedData, prepare_data
from posttrain.methods import METHODS
from posttrain.methods.callbacks import NoFinalCheckpoint, StopOnNonFiniteWeights, StopOnSignal
from posttrain.methods.common import Stage, load_trainable_model, prepare_stage, seed_everything
from posttrain.methods.train_defaults import AUTO_TRAIN_DEFAULTS
from posttrain.plan.fit import resolve_auto_checkpointing
from posttrain.precision import keep_trainable_fp32, trainable_weights_kept, trainer_flags
from posttrain.recipe import Recipe
from posttrain.runs import stopping


def prepare_with_data(recipe: Recipe, defaults: dict, preference: bool = False, margins: dict | None = None) -> Stage:
    """The stage with its prepared data: everything checkable without weights. The method's defaults go under the
    recipe's `train:` so the saved recipe.yaml shows what was used."""
    stage = prepare_stage(recipe)
    seed = recipe.train.get("seed", defaults["seed"])
    feedback = METHODS[recipe.method].data == "feedback"
    stage.data = prepare_data(
        recipe.data, stage.tokenizer, seed=seed, preference=preference, margins=margins, feedback=feedback
    )
    stage.details = describe_data(stage.data)
    recipe.train = defaults | AUTO_TRAIN_DEFAULTS | recipe.train
    stage.details += resolve_auto_checkpointing(recipe, stage.hardware, stage.precision)
    return stage


def trl_config(config_cls: type, stage: Stage):
    """The method's TRL config from the resolved recipe, with posttrain's precision and run folder."""
    from posttrain.trl_compat import config_arguments  # imports TRL's experimental ORPO too: only when training

    # GRPO has no max_length: its prompts and completions have limits of their own
    lengths = {"max_length": stage.recipe.data.max_length} if "max_length" in config_cls.__dataclass_fields__ else {}
    return config_cls(
        output_dir=str(stage.run.checkpoints),
        **lengths,
        **trainer_flags(stage.precision, stage.hardware),
        **config_arguments(config_cls, stage.recipe.train),
    )


def trl_trainer(trainer_cls: type, config, stage: Stage, task_type: str = "CAUSAL_LM", model=None, **extra):
    """A TRL trainer on the 4-bit base with its LoRA adapter (or `model`, made by `trainable_model`), the prepared
    data and the run's TensorBoard logs."""
    model = model if model is not None else trainable_model(stage, config, task_type)
    with trainable_weights_kept(model):  # TRL rounds them to bf16 on a 4-bit base
        trainer = trainer_cls(
            model=model,
            args=config,
            processing_class=stage.tokenizer,
            callbacks=tensorboard_callbacks(config, stage.run.logs)
            + [StopOnSignal(), NoFinalCheckpoint(), StopOnNonFiniteWeights(stage.run.checkpoints)],
            **datasets_of(stage.data),
            **extra,
        )
    trainer.data_collator = PaddingMeter(trainer.data_collator, trainer)  # padding share for metrics.json
    return trainer


def trainable_model(stage: Stage, config, task_type: str = "CAUSAL_LM"):
    """The 4-bit base with its LoRA adapter, seeded from the recipe first."""
    seed_everything(config.seed)  # before the adapter's (and a score head's) random init, not only in the trainer
    return load_trainable_model(stage, task_type)


def datasets_of(data: PreparedData) -> dict:
    from posttrain.data.tool_calls import dataset_of

    return {
        "train_dataset": dataset_of(data.train),
        "eval_dataset": dataset_of(data.eval) if data.eval else None,
    }


def tensorboard_callbacks(config, logs_dir: Path) -> list:
    """Send TensorBoard logs to the run's logs/ (transformers 5 only takes that folder from an env variable)."""
    if "tensorboard" not in (config.report_to or []):
        return []
    from transformers.integrations import TensorBoardCallback

    config.report_to = [name for name in config.report_to if name != "tensorboard"]
    callback = TensorBoardCallback()
    callback.logging_dir = str(logs_dir)  # kept when the writer is reopened for the final evaluation
    return [callback]


def train_and_finish(stage: Stage, trainer, *, resume: bool, extra_metrics: Callable[[], dict] = dict) -> dict:
    """Train (from the last checkpoint with --resume), save adapter and tokenizer, then write metrics.json."""
    keep_trainable_fp32(trainer.model)
    if stage.before_train is not None:
        stage.before_train(trainer)
    checkpoint = str(stage.run.resume_from(trainer.is_world_process_zero())) if resume else None
    result = trainer.train(resume_from_checkpoint=checkpoint)
    stopping.raise_if_requested(trainer.state.global_step, stage.run)  # SIGTERM or Ctrl-C: stopped with a checkpoint
    metrics = {"train": result.metrics, "final_step": trainer.state.global_step}
    watch = next(c for c in trainer.callback_handler.callbacks if isinstance(c, StopOnNonFiniteWeights))
    metrics["fp16_skipped_steps"] = watch.skipped_steps  # overflows the loss scaler handled by skipping the update
    if trainer.eval_dataset is not None:
        metrics["eval"] = trainer.evaluate()
    metrics |= data_metrics(stage.data) | extra_metrics()
    if isinstance(trainer.data_collator, PaddingMeter):
        metrics["data"]["batches"] = trainer.data_collator.metrics()
    stage.run.save_adapter(trainer)
    if trainer.is_world_process_zero():
        stage.tokenizer.save_pretrained(stage.run.path)
        metrics |= {
            "precision": stage.precision,
            "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "log_history": trainer.state.log_history,
        }
        stage.run.write_metrics(metrics)
    return metrics


def describe_data(data: PreparedData) -> list[str]:
    if "label" in data.train[0]:
        loss = "unpaired feedback (desirable / undesirable answers)"
    elif "chosen" in data.train[0]:
        loss = "preference pairs"
    elif data.conversational:
        loss = "loss on assistant turns only"
    else:
        loss = "loss on every token (continued pretraining)"
    rows = "blocks" if data.pretokenized else "rows"
    lines = [f"data        {data.format}: {len(data.train)} train {rows}, {len(data.eval)} eval {rows}; {loss}"]
    return lines + data.report.lines()


def padding_line(data: PreparedData, batch_size: int, padding_free: bool) -> str:
    """The share of batch tokens that would be padding, said before training (metrics.json has the measured one)."""
    if batch_size == 1:
        return "batches     one row per micro-batch: no padding"
    if padding_free:
        return f"batches     padding-free: the {batch_size} rows of a batch laid end to end, 0% padding"
    share = padded_fraction(data.train_lengths, batch_size)
    return f"batches     padded to the longest of {batch_size} rows: about {share:.0%} of batch tokens are padding"


def data_metrics(data: PreparedData) -> dict:
    counts = {"format": data.format, "train_rows": len(data.train), "eval_rows": len(data.eval)}
    if data.report is not None:  # data read from files (rs builds its rows itself)
        report = data.report
        counts |= {"too_long": report.too_long, "on_too_long": report.action, "identical_pairs": report.identical}
        counts |= {"prompts_cut": report.prompts_cut, "sources": data.sources}
        if report.blocks:
            blocks = report.blocks
            counts |= {"documents": blocks.documents, "tokens": blocks.tokens, "blocks": blocks.blocks}
    return {"data": counts}
