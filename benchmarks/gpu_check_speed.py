"""Seconds per optimizer step of posttrain against a plain TRL script with the same settings, for
benchmarks/gpu_check.py. The posttrain side is the run the check trains anyway (through the CLI); the TRL side is
what a user writes with TRL alone for the settings that run used (its recipe.yaml, posttrain's defaults and settled
`auto` values included) and its data. benchmarks/train_speed.py does the same on a CPU for smollm2-135m.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from transformers import TrainerCallback


class StepTimer(TrainerCallback):
    """Wall time of each optimizer step of every Trainer built while it is installed."""

    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    @staticmethod
    def _sync():
        if torch.cuda.is_available():  # CUDA runs ahead of Python: wait for the step's kernels to finish
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.times.append(time.perf_counter() - self._start)

    def install(self) -> StepTimer:
        # posttrain builds its trainers inside the CLI, where no callback can be passed in; transformers adds its
        # DEFAULT_CALLBACKS to every Trainer it builds, so the timer goes there.
        from transformers import trainer

        self.times.clear()
        trainer.DEFAULT_CALLBACKS.append(self)
        return self

    def remove(self) -> list[float]:
        from transformers import trainer

        trainer.DEFAULT_CALLBACKS.remove(self)
        return list(self.times)


def s_per_step(times: list[float], warmup: int) -> float | None:
    timed = times[warmup:]
    return round(sum(timed) / len(timed), 4) if timed else None


def conversational(row: dict) -> dict:
    """A preference row with message lists, so that TRL applies the chat template as posttrain does."""
    if isinstance(row.get("prompt"), str):
        row = {
            "prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
    return row


# TRL config fields the plain TRL side sets apart from posttrain's run; every other field must be equal
# (tests/test_gpu_check.py compares the two configs).
DIFFERS = {
    "output_dir": "a folder of its own",
    "logging_dir": "follows output_dir",
    "save_strategy": "no checkpoints: only the step times are wanted",
    "logging_steps": "no logging between the timed steps",
    "report_to": "no TensorBoard",
    "eval_strategy": "no evaluation between the timed steps",
}


def plain_trl_config(method: str, run: Path, output: Path):
    """The TRL config a user writes with TRL alone for the settings posttrain's run used: the `train:` section of the
    run's recipe.yaml (posttrain's defaults and its settled `auto` values included: padding-free batches, the loss on
    assistant turns only, activation checkpointing), max_length and precision. Builds no model."""
    import yaml
    from trl import DPOConfig, SFTConfig

    from posttrain.precision import choose_precision, detect_hardware, trainer_flags
    from posttrain.trl_compat import config_arguments  # transformers before 5.24 names checkpointing gradient_*

    recipe = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
    hardware = detect_hardware()
    precision = choose_precision(recipe["model"]["precision"], hardware)
    train = recipe["train"]
    length = recipe["data"]["max_length"]
    if method == "sft" and train.get("padding_free") and not train.get("packing"):
        length = None  # TRL refuses a max_length on padding-free rows; every row fits (posttrain checked)
    own = {
        "output_dir": str(output),
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 1000,
        "report_to": "none",
    }
    config_cls = SFTConfig if method == "sft" else DPOConfig
    settings = train | {"max_length": length} | trainer_flags(precision, hardware) | own
    return config_cls(**config_arguments(config_cls, settings))


def plain_trl_s_per_step(method: str, run: Path, model_dir: str) -> dict:
    """Train `method` with TRL alone on `model_dir` with the settings of posttrain's run folder `run` (its recipe.yaml:
    LoRA, quantization, precision, the `train:` keys, max_length, the data file; its chat template)."""
    import yaml
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import DPOTrainer, SFTTrainer

    config = plain_trl_config(method, run, run.parent / f"plain-trl-{method}")
    recipe = yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8"))
    dtype = torch.float16 if config.fp16 else torch.bfloat16 if config.bf16 else torch.float32
    spec = recipe["model"]
    quant = None
    if spec["quantization"] in ("nf4", "fp4"):
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=spec["quantization"],
            bnb_4bit_use_double_quant=spec["double_quant"],
            bnb_4bit_compute_dtype=dtype,
        )
    elif spec["quantization"] == "int8":
        quant = BitsAndBytesConfig(load_in_8bit=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, quantization_config=quant, device_map={"": device} if quant else None
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = (run / "chat_template.jinja").read_text(encoding="utf-8")
    tokenizer.pad_token = tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    rows = [json.loads(line) for line in Path(recipe["data"]["train"]).read_text(encoding="utf-8").splitlines()]
    if method == "dpo":
        rows = [conversational(row) for row in rows]
    lora = recipe["lora"]
    timer = StepTimer().install()  # before the trainer is built: a Trainer takes its callbacks when it is made
    trainer = (SFTTrainer if method == "sft" else DPOTrainer)(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"], target_modules=lora["target_modules"]
        ),
    )
    # TRL casts a quantized model's LoRA weights to bf16; fp16 mixed precision (and posttrain) train them in fp32
    for param in trainer.model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    try:
        trainer.train()
    finally:
        times = timer.remove()
    return {"steps": len(times), "times": [round(t, 4) for t in times]}
