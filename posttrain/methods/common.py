"""What every training stage does around its TRL trainer: resolve the model, pick precision, claim the run
folder, load the 4-bit base with its adapter, then train, save and record metrics."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posttrain.errors import UserError
from posttrain.models.loading import ModelRef, add_lora, load_base_model, load_tokenizer, resolve_model
from posttrain.precision import Hardware, choose_precision, detect_hardware, keep_trainable_fp32
from posttrain.recipe import Recipe, save_recipe
from posttrain.runs import RunFolder, library_versions


@dataclass
class Stage:
    """A recipe made concrete for this machine, before any weights are loaded."""

    recipe: Recipe
    hardware: Hardware
    precision: str
    model: ModelRef
    adapter: Path | None  # adapter training continues from, if any
    tokenizer: Any
    run: RunFolder

    def plan_lines(self) -> list[str]:
        r = self.recipe
        quant = r.model.quantization if r.model.quantization == "none" else f"{r.model.quantization} (4-bit)"
        if r.model.quantization == "int8":
            quant = "int8"
        lora = (
            f"continue the adapter of {self.adapter.parent}"
            if self.adapter
            else (f"new LoRA r={r.lora.r} alpha={r.lora.alpha} on {r.lora.target_modules}")
        )
        return [
            f"method      {r.method}",
            f"model       {self.model.name}",
            f"adapter     {lora}",
            f"hardware    {self.hardware.name} -> precision {self.precision}, quantization {quant}",
            f"output      {self.run.path}",
        ]


def prepare_stage(recipe: Recipe) -> Stage:
    hardware = detect_hardware()
    precision = choose_precision(recipe.model.precision, hardware)
    model = resolve_model(recipe.model.name)
    adapter = model.adapter
    if recipe.model.adapter:
        if adapter is not None:
            raise UserError(
                "model.name is already a run folder with an adapter; leave model.adapter empty, or "
                "set model.name to the base model."
            )
        adapter_run = resolve_model(recipe.model.adapter)
        if not adapter_run.is_run:
            raise UserError(f"model.adapter: {recipe.model.adapter} is not a posttrain run folder with an adapter.")
        if adapter_run.base != model.base:
            raise UserError(
                f"model.adapter: {recipe.model.adapter} was trained on {adapter_run.name}, not on {model.name}."
            )
        adapter = adapter_run.adapter
    tokenizer = load_tokenizer(model, recipe.model.chat_template)
    return Stage(recipe, hardware, precision, model, adapter, tokenizer, RunFolder(recipe.output_dir))


def load_trainable_model(stage: Stage, task_type: str = "CAUSAL_LM"):
    r = stage.recipe.model
    base = load_base_model(stage.model, r.quantization, r.double_quant, stage.precision)
    base.config.pad_token_id = stage.tokenizer.pad_token_id
    return add_lora(base, stage.recipe.lora, stage.adapter, task_type)


def start_run(stage: Stage, *, resume: bool, overwrite: bool) -> None:
    stage.run.check_writable(resume=resume, overwrite=overwrite)
    stage.run.start(resume=resume, overwrite=overwrite)
    save_recipe(stage.recipe, stage.run.recipe_file, {"base_model": stage.model.name, "versions": library_versions()})


def tensorboard_callbacks(config, logs_dir: Path) -> list:
    """Send TensorBoard logs to the run's logs/ (transformers 5 only takes that folder from an env variable)."""
    if "tensorboard" not in (config.report_to or []):
        return []
    from transformers.integrations import TensorBoardCallback

    config.report_to = [name for name in config.report_to if name != "tensorboard"]
    callback = TensorBoardCallback()
    callback.logging_dir = str(logs_dir)  # kept when the writer is reopened for the final evaluation
    return [callback]


def train_and_finish(stage: Stage, trainer, *, resume: bool, extra_metrics: dict | None = None) -> dict:
    """Train (from the last checkpoint with --resume), save adapter and tokenizer, then write metrics.json."""
    keep_trainable_fp32(trainer.model)
    checkpoint = str(stage.run.latest_checkpoint()) if resume else None
    result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = {"train": result.metrics, "final_step": trainer.state.global_step}
    if trainer.eval_dataset is not None:
        metrics["eval"] = trainer.evaluate()
    stage.run.save_adapter(trainer)
    if trainer.is_world_process_zero():
        stage.tokenizer.save_pretrained(stage.run.path)
        metrics |= {
            "precision": stage.precision,
            "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
            "log_history": trainer.state.log_history,
            **(extra_metrics or {}),
        }
        stage.run.write_metrics(metrics)
    return metrics
