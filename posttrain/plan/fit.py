"""`posttrain plan`: will a recipe fit a GPU? The estimate of posttrain.plan against the GPU's usable memory, the
verdict, and the recipe changes that would make it fit, largest saving first. The training commands run the same
check on a GPU before loading anything, and warn."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass

from posttrain.errors import UserError
from posttrain.methods import METHODS
from posttrain.plan.estimate import LAYOUTS, Models, estimate, per_gpu, response_room, trains_checkpointed
from posttrain.plan.memory import GIB
from posttrain.precision import Hardware, choose_precision, detect_hardware
from posttrain.recipe import Recipe


@dataclass(frozen=True)
class GPU:
    name: str
    memory_gib: float  # total memory, as nvidia-smi reports it
    capability: tuple[int, int]

    @property
    def hardware(self) -> Hardware:
        return Hardware("cuda", self.name, self.capability)


GPUS = {
    "t4": GPU("NVIDIA T4", 15.0, (7, 5)),
    "v100": GPU("NVIDIA V100 16GB", 15.8, (7, 0)),
    "v100-32gb": GPU("NVIDIA V100 32GB", 31.7, (7, 0)),
    "l4": GPU("NVIDIA L4", 22.5, (8, 9)),
    "a10g": GPU("NVIDIA A10G", 22.5, (8, 6)),
    "a100-40gb": GPU("NVIDIA A100 40GB", 40.0, (8, 0)),
    "a100-80gb": GPU("NVIDIA A100 80GB", 80.0, (8, 0)),
    "h100": GPU("NVIDIA H100 80GB", 79.6, (9, 0)),
}
CUDA_CONTEXT_GIB = 0.5  # CUDA context and kernels: on the GPU, outside what PyTorch allocates
WANTED_HEADROOM = 0.10  # of usable memory, for the caching allocator's fragmentation


@dataclass
class Verdict:
    usable: int  # bytes PyTorch can have on this GPU
    peak: int

    @property
    def headroom(self) -> int:
        return self.usable - self.peak

    @property
    def fits(self) -> bool:
        return self.headroom >= 0

    def line(self, gpu_name: str) -> str:
        room = f"{self.headroom / GIB:.1f} GiB headroom of {self.usable / GIB:.1f} GiB usable"
        if not self.fits:
            over = f"{-self.headroom / GIB:.1f} GiB"
            return f"does not fit on {gpu_name}: {over} over its {self.usable / GIB:.1f} GiB usable"
        if self.headroom < WANTED_HEADROOM * self.usable:
            return f"fits on {gpu_name}, but tight ({room}; fragmentation may push it over)"
        return f"fits on {gpu_name} ({room})"


def verdict(peak: int, memory_gib: float) -> Verdict:
    return Verdict(int((memory_gib - CUDA_CONTEXT_GIB) * GIB), peak)


def _halve_batch(recipe: Recipe) -> None:
    train = recipe.train
    train["per_device_train_batch_size"] = train.get("per_device_train_batch_size", 4) // 2
    train["gradient_accumulation_steps"] = train.get("gradient_accumulation_steps", 1) * 2


def _halve_ppo_batch(recipe: Recipe) -> None:
    s = recipe.ppo
    s.batch_size //= 2
    while s.batch_size % s.mini_batch_size:
        s.mini_batch_size //= 2


def _halve_rank(recipe: Recipe) -> None:
    recipe.lora.r, recipe.lora.alpha = recipe.lora.r // 2, max(1, recipe.lora.alpha // 2)


def _changes(recipe: Recipe, models: Models) -> list[tuple[str, Callable[[Recipe], None]]]:
    """Recipe changes that lower the peak without changing what is learned much: (--set text, apply)."""
    how = METHODS[recipe.method].plan
    changes = _ppo_changes(recipe) if how == "ppo" else _training_changes(recipe)
    if how == "rs" and recipe.rs.batch_size > 1:
        halved = recipe.rs.batch_size // 2
        changes.insert(0, (f"rs.batch_size={halved}", lambda r: setattr(r.rs, "batch_size", r.rs.batch_size // 2)))
    if how == "generation" and getattr(recipe, recipe.method).batch_size > 1:  # gatt, distill
        key = f"{recipe.method}.batch_size={getattr(recipe, recipe.method).batch_size // 2}"
        changes.insert(
            0, (key, lambda r: setattr(getattr(r, r.method), "batch_size", getattr(r, r.method).batch_size // 2))
        )
    if models.policy.lora is None and recipe.lora.r >= 8:
        changes.append((f"lora.r={recipe.lora.r // 2} lora.alpha={max(1, recipe.lora.alpha // 2)}", _halve_rank))
    return changes


def _ppo_changes(recipe: Recipe) -> list[tuple[str, Callable[[Recipe], None]]]:
    s, changes = recipe.ppo, []
    if s.mini_batch_size > 1:
        changes.append(("ppo.mini_batch_size=1", lambda r: setattr(r.ppo, "mini_batch_size", 1)))
    if s.batch_size > 1:
        changes.append((f"ppo.batch_size={s.batch_size // 2}", _halve_ppo_batch))
    if not s.activation_checkpointing:
        changes.append(
            ("ppo.activation_checkpointing=true", lambda r: setattr(r.ppo, "activation_checkpointing", True))
        )
    return changes


def _training_changes(recipe: Recipe) -> list[tuple[str, Callable[[Recipe], None]]]:
    """For a TRL trainer's `train:` section."""
    train, changes = recipe.train, []
    if not trains_checkpointed(train):
        changes.append(("train.activation_checkpointing=true", lambda r: r.train.update(activation_checkpointing=True)))
    batch, accumulation = train.get("per_device_train_batch_size", 4), train.get("gradient_accumulation_steps", 1)
    if batch > 1:
        text = f"train.per_device_train_batch_size={batch // 2} train.gradient_accumulation_steps={accumulation * 2}"
        changes.append((text, _halve_batch))
    if batch > 2:  # micro-batch 1, the same rows per optimizer step
        text = f"train.per_device_train_batch_size=1 train.gradient_accumulation_steps={accumulation * batch}"
        changes.append(
            (
                text,
                lambda r: r.train.update(
                    per_device_train_batch_size=1, gradient_accumulation_steps=accumulation * batch
                ),
            )
        )
    if "8bit" not in train.get("optim", "adamw_torch_fused"):
        changes.append(("train.optim=paged_adamw_8bit", lambda r: r.train.update(optim="paged_adamw_8bit")))
    return changes


def _longest_fitting_length(recipe: Recipe, models: Models, precision: str, budget: int) -> int | None:
    """The largest data.max_length (a multiple of 64) whose peak stays within `budget`, if below the recipe's."""
    shortest = 64 + response_room(recipe)

    def peak(length: int) -> int:
        changed = copy.deepcopy(recipe)
        changed.data.max_length = length
        return estimate(changed, models, precision).total

    low, high = shortest // 64, (recipe.data.max_length - 1) // 64
    if high < low or peak(low * 64) > budget:
        return None
    while low < high:  # the peak grows with the length: bisect on multiples of 64
        middle = (low + high + 1) // 2
        low, high = (middle, high) if peak(middle * 64) <= budget else (low, middle - 1)
    return low * 64


def suggestions(recipe: Recipe, models: Models, precision: str, usable: int) -> list[tuple[str, int, int]]:
    """(--set changes, saving, new peak) of each change that lowers the peak, largest saving first."""
    before = estimate(recipe, models, precision).total
    found = []
    for text, change in _changes(recipe, models):
        changed = copy.deepcopy(recipe)
        change(changed)
        after = estimate(changed, models, precision).total
        if after < before:
            found.append((text, before - after, after))
    length = _longest_fitting_length(recipe, models, precision, int(usable * (1 - WANTED_HEADROOM)))
    if length is not None:
        changed = copy.deepcopy(recipe)
        changed.data.max_length = length
        after = estimate(changed, models, precision).total
        found.append((f"data.max_length={length}", before - after, after))
    return sorted(found, key=lambda item: -item[1])


def combination(recipe: Recipe, models: Models, precision: str, usable: int) -> tuple[list[str], int] | None:
    """(--set changes, new peak) that together bring the peak within usable memory less the wanted headroom: the
    change that saves most, then again on the changed recipe, and data.max_length last (the LoRA rank is left as it
    is); None if none does."""
    budget = int(usable * (1 - WANTED_HEADROOM))
    changed, chosen = copy.deepcopy(recipe), {}
    peak = estimate(changed, models, precision).total
    while peak > budget:
        options = []
        for text, change in _changes(changed, models):
            if text.startswith("lora."):  # a smaller adapter learns less: offered alone, never folded in
                continue
            trial = copy.deepcopy(changed)
            change(trial)
            options.append((estimate(trial, models, precision).total, text, trial))
        options = [option for option in options if option[0] < peak]
        if not options:
            break
        peak, text, changed = min(options, key=lambda option: option[0])
        chosen |= dict(setting.split("=", 1) for setting in text.split())  # a later value of a key wins
    if peak > budget:
        length = _longest_fitting_length(changed, models, precision, budget)
        if length is None:
            return None
        changed.data.max_length, chosen["data.max_length"] = length, str(length)
        peak = estimate(changed, models, precision).total
    return [f"{key}={value}" for key, value in chosen.items()], peak


# ---------------------------------------------------------------- activation checkpointing: auto


GPU_MEMORY_VARIABLE = "POSTTRAIN_GPU_MEMORY_GIB"  # a GPU's memory to plan for instead of its own (a share of it)


def device_memory_gib(hardware: Hardware) -> float:
    """What a run on this machine has: the GPU's memory (POSTTRAIN_GPU_MEMORY_GIB when set, for a process held to
    part of a larger GPU), or on a CPU the machine's RAM; a dry run's stand-in GPU has its own."""
    if hardware.memory_gib is not None:
        return hardware.memory_gib
    if hardware.device == "cuda" and os.environ.get(GPU_MEMORY_VARIABLE):
        try:
            return float(os.environ[GPU_MEMORY_VARIABLE])
        except ValueError:
            raise UserError(
                f"{GPU_MEMORY_VARIABLE} must be a number of GiB, got {os.environ[GPU_MEMORY_VARIABLE]!r}."
            ) from None
    if hardware.device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory / GIB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def resolve_auto_checkpointing(
    recipe: Recipe, hardware: Hardware, precision: str, memory_gib: float | None = None
) -> list[str]:
    """Settle `train.activation_checkpointing: auto` (the TRL-trained methods' default) in place: on when the plan's
    peak without it leaves less than 10% of the device's memory free, off otherwise (recomputing every layer costs
    about a third more time per step). Returns the line saying which and why."""
    train = recipe.train
    if train.get("activation_checkpointing", "auto") != "auto":
        return []
    if "gradient_checkpointing" in train:  # transformers' older name, set by the recipe: it decides
        train.pop("activation_checkpointing", None)
        return []
    cuda = hardware.device == "cuda"
    memory_gib = device_memory_gib(hardware) if memory_gib is None else memory_gib
    without = copy.deepcopy(recipe)
    without.train["activation_checkpointing"] = False
    try:
        peak = estimate(without, Models.of(recipe), precision, cuda=cuda).total
    except UserError:
        train["activation_checkpointing"] = True
        return ["memory      activation checkpointing on (auto: the plan cannot read this model's config)"]
    budget = (memory_gib - (CUDA_CONTEXT_GIB if cuda else 0)) * GIB * (1 - WANTED_HEADROOM)
    needed = peak > budget
    train["activation_checkpointing"] = needed
    where = "GPU memory" if cuda else "RAM"
    return [
        f"memory      activation checkpointing {'on' if needed else 'off'} (auto): {peak / GIB:.1f} GiB predicted "
        f"without it, {'over' if needed else 'within'} 90% of {memory_gib:.3g} GiB {where}"
    ]


# ---------------------------------------------------------------- what the commands print


def plan_lines(
    recipe: Recipe, gpu_name: str, memory_gib: float, hardware: Hardware, gpus: tuple[int, str] | None = None
) -> tuple[list[str], Verdict]:
    """The report of `posttrain plan`: each phase's terms, the verdict, and the changes that would make it fit.
    gpus: (count, accelerate preset) to plan one GPU of several (posttrain.plan.estimate.per_gpu)."""
    precision = choose_precision(recipe.model.precision, hardware)
    models = Models.of(recipe)
    auto = []
    if METHODS[recipe.method].plan == "training":  # the methods whose runs settle train.activation_checkpointing: auto
        recipe = copy.deepcopy(recipe)
        auto = resolve_auto_checkpointing(recipe, hardware, precision, memory_gib)
    result = estimate(recipe, models, precision)
    if gpus:
        result = per_gpu(result, recipe, models, precision, *gpus)
    shape = models.policy.shape
    lines = [
        f"plan        {recipe.method} {recipe.source} on {gpu_name} ({memory_gib:g} GiB), {precision}",
        f"model       {models.policy.base}: {shape.layers} layers, hidden {shape.hidden}, vocabulary {shape.vocab}",
    ]
    if gpus:
        lines.append(f"gpus        memory of each of {gpus[0]} GPUs under {gpus[1]}: {LAYOUTS[gpus[1]]}")
    lines += [line.replace("memory     ", "checkpoint ") for line in auto]
    for phase in result.phases:
        peak = " (the peak)" if phase is result.peak and len(result.phases) > 1 else ""
        lines.append(f"{phase.name}{peak}")
        lines += [f"  {t.name:<24} {t.bytes / GIB:7.2f} GiB  {t.note}".rstrip() for t in phase.terms]
        lines.append(f"  {'total':<24} {phase.total / GIB:7.2f} GiB")
    found = verdict(result.total, memory_gib)
    lines.append(f"verdict     {found.line(gpu_name)}")
    if found.headroom < WANTED_HEADROOM * found.usable:
        lines += advice_lines(recipe, models, precision, found, gpu_name)
    return lines, found


def advice_lines(recipe: Recipe, models: Models, precision: str, found: Verdict, gpu_name: str) -> list[str]:
    """What would make a run that is over (or tight on) a GPU fit: a combination, then each change alone."""
    budget = found.usable * (1 - WANTED_HEADROOM)
    together = combination(recipe, models, precision, found.usable)
    if together is None:
        lines = [f"to fit: no combination of these changes fits {gpu_name}; plan a larger GPU (--gpu) or model"]
    else:
        settings, peak = together
        lines = [f"to fit, together: --set {' --set '.join(settings)}   -> {peak / GIB:.2f} GiB"]
    lines.append("each change alone, largest saving first:")
    for text, saving, after in suggestions(recipe, models, precision, found.usable):
        alone = "fits alone" if after <= budget else "not enough alone"
        lines.append(
            f"  --set {text.replace(' ', ' --set ')}   saves {saving / GIB:.2f} GiB -> {after / GIB:.2f} GiB ({alone})"
        )
    return lines


def warn_if_too_big(recipe: Recipe, echo: Callable[[str], None], memory_gib: float | None = None) -> None:
    """Before a training command loads anything on a GPU: say so when the plan predicts it will not fit."""

    hardware = detect_hardware()
    if hardware.device != "cuda" and memory_gib is None:
        return  # the estimate is of GPU memory
    if memory_gib is None:
        memory_gib = device_memory_gib(hardware)
    try:
        precision = choose_precision(recipe.model.precision, hardware)
        peak = estimate(recipe, Models.of(recipe), precision, cuda=True).total
    except UserError:
        return  # what keeps the estimate from reading the model, the method's own checks report next
    found = verdict(peak, memory_gib)
    if not found.fits:
        echo(
            f"warning     predicted peak {peak / GIB:.1f} GiB: {found.line(hardware.name)}. It will likely run out "
            f"of memory; `posttrain plan {recipe.source} --memory-gb {memory_gib:.0f}` shows what to change."
        )
