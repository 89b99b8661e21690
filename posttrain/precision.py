"""The one place precision is decided and enforced: never emulated bf16.

CUDA compute capability >= 8.0 -> bf16; below (T4, V100) -> fp16 autocast; CPU -> fp32.
Trainable (LoRA) weights are always kept in fp32: TRL casts them to bf16 on quantized models, which breaks the
fp16 GradScaler and fp32 runs, and fp32 adapters cost little memory.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from posttrain.errors import UserError

PRECISIONS = ("fp32", "fp16", "bf16")


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    name: str
    capability: tuple[int, int] | None = None  # CUDA compute capability
    cpu_native_bf16: bool = False
    memory_gib: float | None = None  # set for a GPU this machine does not have: a dry run's stand-in

    @property
    def cuda_bf16(self) -> bool:
        return self.capability is not None and self.capability >= (8, 0)


# A dry run without a GPU checks a recipe whose precision needs one as on this GPU (model.precision -> Hardware).
_STAND_INS: ContextVar[dict[str, Hardware] | None] = ContextVar("gpu_stand_ins", default=None)


@contextmanager
def gpu_stand_ins(by_precision: dict[str, Hardware]):
    """Within: on a machine without a CUDA GPU, hardware_for(precision) gives `by_precision[precision]`, so that a
    dry run checks the rest of a GPU recipe. Nothing may run on a stand-in: it is for checks and plans only."""
    token = _STAND_INS.set(by_precision)
    try:
        yield
    finally:
        _STAND_INS.reset(token)


def hardware_for(requested: str, hardware: Hardware) -> Hardware:
    """The hardware a recipe asking for model.precision `requested` is checked on: this machine's, or within
    gpu_stand_ins, on a machine without a GPU, the stand-in GPU for that precision."""
    stand_in = (_STAND_INS.get() or {}).get(requested)
    if hardware.device == "cpu" and stand_in is not None and not (requested == "bf16" and hardware.cpu_native_bf16):
        return stand_in
    return hardware


def detect_hardware() -> Hardware:
    import torch

    if torch.cuda.is_available():
        return Hardware("cuda", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
    native = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return Hardware("cpu", "CPU", cpu_native_bf16=native)


def choose_precision(requested: str, hardware: Hardware) -> str:
    """Map model.precision (auto | fp32 | fp16 | bf16) onto what this hardware runs natively."""
    if requested == "auto":
        if hardware.device == "cuda":
            return "bf16" if hardware.cuda_bf16 else "fp16"
        return "fp32"
    if requested == "bf16" and not (hardware.cuda_bf16 or hardware.cpu_native_bf16):
        cap = f" (compute capability {hardware.capability[0]}.{hardware.capability[1]})" if hardware.capability else ""
        raise UserError(
            f"model.precision: bf16 was requested but {hardware.name}{cap} has no native bf16; "
            "emulated bf16 is many times slower. Use precision: auto (fp16 on a GPU before Ampere, fp32 on CPU)."
        )
    if requested == "fp16" and hardware.device != "cuda":
        raise UserError("model.precision: fp16 needs a CUDA GPU; on CPU use precision: auto (fp32).")
    if requested not in PRECISIONS:
        raise UserError(f"model.precision must be auto, fp32, fp16 or bf16, got {requested!r}.")
    return requested


def torch_dtype(precision: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def autocast(precision: str, device_type: str):
    """The autocast TRL's trainers (and accelerate) run a model under at this precision; none in fp32."""
    import torch

    return torch.autocast(device_type, dtype=torch_dtype(precision), enabled=precision != "fp32")


def trainer_flags(precision: str, hardware: Hardware) -> dict[str, bool]:
    """The TrainingArguments switches for a precision (TRL's configs default to bf16=True). On a CPU, use_cpu is
    what lets transformers accept bf16 there (it refuses bf16 without a bf16 GPU otherwise)."""
    return {
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": hardware.device == "cpu",
        "dataloader_pin_memory": hardware.device == "cuda",
    }


@contextmanager
def trainable_weights_kept(model):
    """Give the trainable weights back exactly as they were once the body is done: building a TRL trainer on a
    quantized model casts them to bf16, and casting back restores the dtype but not the bits lost. Without this, a
    continued adapter (DPO from SFT, each rs round, model.adapter) would start from rounded weights, and DPO's
    policy would differ from its reference (copied before the cast) at step 0."""
    import torch

    trainable = [(name, param) for name, param in model.named_parameters() if param.requires_grad]
    kept = {name: param.detach().to(torch.float32, copy=True) for name, param in trainable}
    yield
    for name, param in model.named_parameters():
        if name in kept:
            param.data = kept[name]


def keep_trainable_fp32(model) -> None:
    """Undo TRL's bf16 cast of trainable weights on quantized models (call after building a TRL trainer)."""
    import torch

    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()


def check_weights_finite(model, step: int, checkpoints) -> None:
    """Stop a run whose trainable weights stopped being numbers (an update from an overflowed loss or gradient;
    fp16 on a T4 is where this happens). A step fp16's loss scaler skipped leaves the weights as they were, so
    this only fires when an update went through. The step is not saved, so the last checkpoint stays good."""
    import torch

    broken = [name for name, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if broken:
        raise UserError(
            f"step {step}: {len(broken)} trainable weights are no longer finite numbers (first: {broken[0]}): the "
            "loss or its gradient overflowed. Training stopped before saving this step; the last checkpoint in "
            f"{checkpoints} (if any) is good to --resume from after a change: a lower learning rate "
            "(train.learning_rate or ppo.learning_rate), a shorter data.max_length, or train.max_grad_norm. The "
            "trainable LoRA weights are already kept in fp32."
        )
