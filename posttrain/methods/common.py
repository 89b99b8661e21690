"""What every training stage does around its TRL trainer: resolve the model, pick precision, claim the run
folder, load the 4-bit base with its adapter, then train, save and record metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from posttrain import stopping
from posttrain.data.prepare import PreparedData, prepare_data
from posttrain.errors import UserError
from posttrain.models.loading import ModelRef, add_lora, load_base_model, load_tokenizer, method_of_run, resolve_model
from posttrain.precision import Hardware, choose_precision, detect_hardware, keep_trainable_fp32, trainer_flags
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
        quant = {"nf4": "nf4 (4-bit)", "fp4": "fp4 (4-bit)"}.get(r.model.quantization, r.model.quantization)
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


# Which earlier runs a method may continue from: causal-LM adapters chain; a reward model is another head.
POLICIES = {"sft", "dpo", "orpo", "ppo", "rs"}
CONTINUES_FROM = {
    "sft": POLICIES,
    "dpo": POLICIES,
    "orpo": POLICIES,
    "ppo": POLICIES,
    "rs": POLICIES,
    "reward": {"reward"},
}


def check_continues_from(method: str, run: Path, key: str) -> None:
    previous = method_of_run(run)
    allowed = CONTINUES_FROM.get(method, set())
    if previous not in allowed:
        wanted = " or ".join(sorted(allowed)) or "no"
        base = "set model.name to its base model" if previous == "sft" and method == "reward" else "name another run"
        raise UserError(
            f"{key}: {run} was trained by `posttrain {previous}`, but {method} continues from {wanted} runs "
            f"(or starts from a base model); {base}."
        )


def prepare_stage(recipe: Recipe) -> Stage:
    hardware = detect_hardware()
    precision = choose_precision(recipe.model.precision, hardware)
    model = resolve_model(recipe.model.name)
    if model.is_run:
        check_continues_from(recipe.method, model.adapter.parent, "model.name")
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
        check_continues_from(recipe.method, adapter_run.adapter.parent, "model.adapter")
        if adapter_run.base != model.base:
            raise UserError(
                f"model.adapter: {recipe.model.adapter} was trained on {adapter_run.name}, not on {model.name}."
            )
        adapter = adapter_run.adapter
    tokenizer = load_tokenizer(model, recipe.model.chat_template)
    return Stage(recipe, hardware, precision, model, adapter, tokenizer, RunFolder(recipe.output_dir))


def load_trainable_model(stage: Stage, task_type: str = "CAUSAL_LM"):
    r = stage.recipe.model
    base = load_base_model(stage.model, r.quantization, r.double_quant, stage.precision, task_type)
    base.config.pad_token_id = stage.tokenizer.pad_token_id
    return add_lora(base, stage.recipe.lora, stage.adapter, task_type)


# Defaults every method puts under the recipe's `train:` (the recipe wins).
COMMON_TRAIN_DEFAULTS = {
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


def prepare_method(recipe: Recipe, defaults: dict, preference: bool = False, margins: dict | None = None):
    """(Stage, PreparedData): everything checkable without weights. The method's defaults go under the recipe's
    `train:` so the saved recipe.yaml shows what was used."""
    stage = prepare_stage(recipe)
    seed = recipe.train.get("seed", defaults["seed"])
    data = prepare_data(recipe.data, stage.tokenizer, seed=seed, preference=preference, margins=margins)
    recipe.train = defaults | recipe.train
    return stage, data


def trl_trainer(trainer_cls: type, config, stage: Stage, data: PreparedData, task_type: str = "CAUSAL_LM", **extra):
    """A TRL trainer on the 4-bit base with its LoRA adapter, the prepared data and the run's TensorBoard logs."""
    from posttrain.methods.callbacks import StopOnSignal

    seed_everything(config.seed)  # before the adapter's (and a score head's) random init, not only in the trainer
    return trainer_cls(
        model=load_trainable_model(stage, task_type),
        args=config,
        processing_class=stage.tokenizer,
        callbacks=tensorboard_callbacks(config, stage.run.logs) + [StopOnSignal()],
        **datasets_of(data),
        **extra,
    )


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device) so a run's random draws follow from its recipe's seed."""
    from transformers import set_seed

    set_seed(seed)


def trl_config(config_cls: type, stage: Stage):
    """The method's TRL config from the resolved recipe, with posttrain's precision and run folder."""
    return config_cls(
        output_dir=str(stage.run.checkpoints),
        max_length=stage.recipe.data.max_length,
        **trainer_flags(stage.precision, stage.hardware),
        **stage.recipe.train,
    )


def datasets_of(data: PreparedData) -> dict:
    from datasets import Dataset

    return {
        "train_dataset": Dataset.from_list(data.train),
        "eval_dataset": Dataset.from_list(data.eval) if data.eval else None,
    }


def processes(stage: Stage):
    """accelerate's view of the processes training this run: one, or those `accelerate launch` started."""
    from accelerate import PartialState

    return PartialState(cpu=stage.hardware.device == "cpu")


def start_run(stage: Stage, *, resume: bool, overwrite: bool) -> None:
    """Claim the run folder. Under several processes every one checks it before the main process changes it (else
    a late check would find the main process's new recipe.yaml and refuse); only the main process writes."""
    state = processes(stage)
    stage.run.claim(resume=resume, overwrite=overwrite, main=state.is_main_process)  # locked until the run ends
    state.wait_for_everyone()
    if state.is_main_process:
        stage.run.start(resume=resume, overwrite=overwrite)
        recorded = {"base_model": stage.model.name, "versions": library_versions()}
        save_recipe(stage.recipe, stage.run.recipe_file, recorded)
    state.wait_for_everyone()


def tensorboard_callbacks(config, logs_dir: Path) -> list:
    """Send TensorBoard logs to the run's logs/ (transformers 5 only takes that folder from an env variable)."""
    if "tensorboard" not in (config.report_to or []):
        return []
    from transformers.integrations import TensorBoardCallback

    config.report_to = [name for name in config.report_to if name != "tensorboard"]
    callback = TensorBoardCallback()
    callback.logging_dir = str(logs_dir)  # kept when the writer is reopened for the final evaluation
    return [callback]


def train_and_finish(stage: Stage, trainer, *, resume: bool, extra_metrics: Callable[[], dict]) -> dict:
    """Train (from the last checkpoint with --resume), save adapter and tokenizer, then write metrics.json."""
    keep_trainable_fp32(trainer.model)
    checkpoint = str(stage.run.resume_from(trainer.is_world_process_zero())) if resume else None
    result = trainer.train(resume_from_checkpoint=checkpoint)
    stopping.raise_if_requested(trainer.state.global_step, stage.run)  # SIGTERM or Ctrl-C: stopped with a checkpoint
    metrics = {"train": result.metrics, "final_step": trainer.state.global_step}
    if trainer.eval_dataset is not None:
        metrics["eval"] = trainer.evaluate()
    metrics |= extra_metrics()
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


class Method(Protocol):
    """What a method module (sft, reward, dpo, orpo) provides to `run_method`."""

    def prepare(self, recipe: Recipe) -> tuple[Stage, PreparedData]: ...

    def build_trainer(self, stage: Stage, data: PreparedData): ...

    def extra_metrics(self, trainer, stage: Stage, data: PreparedData) -> dict: ...


def run_method(
    method: Method,
    recipe: Recipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
    before_train: Callable | None = None,
) -> dict | None:
    """`posttrain <method>`: check everything, print the plan, then train and write the run folder."""
    stage, data = method.prepare(recipe)
    stage.run.check_writable(resume=resume, overwrite=overwrite)
    for line in stage.plan_lines() + describe_data(data):
        echo(line)
    if dry_run:
        echo("dry run: recipe, model and data are valid; no weights were loaded and nothing was written.")
        return None
    start_run(stage, resume=resume, overwrite=overwrite)
    trainer = method.build_trainer(stage, data)
    if before_train is not None:
        before_train(trainer)
    metrics = train_and_finish(
        stage,
        trainer,
        resume=resume,
        extra_metrics=lambda: data_metrics(data) | method.extra_metrics(trainer, stage, data),
    )
    stage.run.release()
    return metrics


def describe_data(data: PreparedData) -> list[str]:
    if "chosen" in data.train[0]:
        loss = "preference pairs"
    elif data.conversational:
        loss = "loss on assistant turns only"
    else:
        loss = "loss on every token (continued pretraining)"
    lines = [f"data        {data.format}: {len(data.train)} train rows, {len(data.eval)} eval rows; {loss}"]
    return lines + data.report.lines()


def data_metrics(data: PreparedData) -> dict:
    report = data.report
    return {
        "data": {
            "format": data.format,
            "train_rows": len(data.train),
            "eval_rows": len(data.eval),
            "too_long": report.too_long,
            "on_too_long": report.action,
            "identical_pairs": report.identical,
        }
    }
