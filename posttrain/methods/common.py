"""What every method shares: the stage (model, precision, tokenizer, adapter to continue, run folder, checked
before any weights load), the one way a method runs (`run_method`), and the base model it trains on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posttrain.errors import UserError
from posttrain.methods import METHODS
from posttrain.models.loading import (
    MissingModelPath,
    ModelRef,
    add_lora,
    load_base_model,
    load_tokenizer,
    method_of_run,
    resolve_model,
)
from posttrain.precision import Hardware, choose_precision, detect_hardware, gpu_stand_ins, hardware_for
from posttrain.recipe import Recipe, save_recipe
from posttrain.runs import RunFolder, library_versions


@dataclass
class Stage:
    """A recipe made concrete for this machine, before any weights are loaded: what a method's prepare() returns."""

    recipe: Recipe
    hardware: Hardware
    precision: str
    model: ModelRef
    adapter: Path | None  # adapter training continues from, if any
    tokenizer: Any
    run: RunFolder
    data: Any = None  # the method's inputs: PreparedData, or prompts and reward runs (rs, ppo)
    details: list[str] = field(default_factory=list)  # what the plan shows of the method's own settings
    before_train: Callable | None = None  # called with the trainer just before training starts

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
        ] + self.details


def check_continues_from(method: str, run: Path, key: str) -> None:
    previous = method_of_run(run)
    allowed = METHODS[method].continues_from
    if previous not in allowed:
        wanted = " or ".join(sorted(allowed)) or "no"
        base = "set model.name to its base model" if previous == "sft" and method == "reward" else "name another run"
        raise UserError(
            f"{key}: {run} was trained by `posttrain {previous}`, but {method} continues from {wanted} runs "
            f"(or starts from a base model); {base}."
        )


def resolve_model_key(name: str, key: str, method: str) -> ModelRef:
    """resolve_model for a recipe key; a missing folder where the method continues a run says which run to train."""
    try:
        return resolve_model(name)
    except MissingModelPath as err:
        starts_from = METHODS[method].starts_from
        if err.writer or not starts_from:
            raise UserError(f"{key}: {err}") from None
        raise UserError(
            f"{key}: {err.what} {method} usually continues a `posttrain {starts_from[0]}` run: train one, then set "
            f"{key} to its output_dir (or name a base model)."
        ) from None


def prepare_stage(recipe: Recipe) -> Stage:
    hardware = hardware_for(recipe.model.precision, detect_hardware())  # a dry run without a GPU: a stand-in
    precision = choose_precision(recipe.model.precision, hardware)
    model = resolve_model_key(recipe.model.name, "model.name", recipe.method)
    if model.is_run:
        check_continues_from(recipe.method, model.adapter.parent, "model.name")
    adapter = model.adapter
    if recipe.model.adapter:
        if adapter is not None:
            raise UserError(
                "model.name is already a run folder with an adapter; leave model.adapter empty, or "
                "set model.name to the base model."
            )
        adapter_run = resolve_model_key(recipe.model.adapter, "model.adapter", recipe.method)
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


# ---------------------------------------------------------------- one way to run a method


def run_method(
    recipe: Recipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
    before_train: Callable | None = None,
    gpu_stand_in: bool = False,
) -> dict | None:
    """`posttrain <method>`: check everything, print the plan, claim the run folder, then train and write it.
    gpu_stand_in (the user's --dry-run): on a machine without a GPU, check a recipe that needs one as on a T4
    (fp16) or an A100 (bf16)."""
    method = METHODS[recipe.method].module
    with gpu_stand_ins(dry_run_gpus() if gpu_stand_in and dry_run else {}):
        stage = method.prepare(recipe, echo)
    stage.before_train = before_train
    stage.run.check_writable(resume=resume, overwrite=overwrite)
    for line in stage.plan_lines():
        echo(line)
    if dry_run:
        echo("dry run: recipe, model and data are valid; no weights were loaded and nothing was written.")
        if stage.hardware.memory_gib is not None:
            echo(
                f"dry run: checked as on {stage.hardware.name}: this machine has no CUDA GPU, and model.precision "
                f"{recipe.model.precision} needs one (a real run here stops). `posttrain plan {recipe.source} --gpu "
                f"{DRY_RUN_GPUS[stage.precision]}` predicts its GPU memory."
            )
        return None
    start_run(stage, resume=resume, overwrite=overwrite)
    try:
        return method.train(stage, resume=resume, echo=echo)
    finally:
        stage.run.release()  # the lock start_run took (also released when the process ends, however it ends)


# The GPU (of plan's table) a dry run on a machine without one checks a recipe for, by model.precision: the free
# Colab T4 for fp16 (the shipped Llama 2 recipes), an A100 for bf16.
DRY_RUN_GPUS = {"fp16": "t4", "bf16": "a100-40gb"}


def dry_run_gpus() -> dict[str, Hardware]:
    from dataclasses import replace

    from posttrain.plan.fit import GPUS

    return {
        precision: replace(GPUS[key].hardware, memory_gib=GPUS[key].memory_gib)
        for precision, key in DRY_RUN_GPUS.items()
    }


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


def processes(stage: Stage):
    """accelerate's view of the processes training this run: one, or those `accelerate launch` started. The first
    call makes the process group, with posttrain's explicit timeout (not NCCL's 10 minutes)."""
    from accelerate import PartialState

    from posttrain import fsdp_cpu
    from posttrain.launch import process_group_timeout

    if fsdp_cpu.asked():
        fsdp_cpu.treat_cpu_group_as_fsdp()  # before a trainer builds its Accelerator
    return PartialState(cpu=stage.hardware.device == "cpu", timeout=process_group_timeout())


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (every device) so a run's random draws follow from its recipe's seed."""
    from transformers import set_seed

    set_seed(seed)


# ---------------------------------------------------------------- the model every method trains on


def load_base(stage: Stage, task_type: str = "CAUSAL_LM"):
    """The (4-bit) base model of the stage, padding with the tokenizer's pad token."""
    r = stage.recipe.model
    base = load_base_model(stage.model, r.quantization, r.double_quant, stage.precision, task_type)
    base.config.pad_token_id = stage.tokenizer.pad_token_id
    return base


def load_trainable_model(stage: Stage, task_type: str = "CAUSAL_LM"):
    return add_lora(load_base(stage, task_type), stage.recipe.lora, stage.adapter, task_type)
