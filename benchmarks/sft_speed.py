"""SFT speed on smollm2-135m: posttrain vs a plain TRL script (TRL's defaults, and the same settings).

Every variant trains LoRA r=16 on all linear layers, batch 4 x 128 tokens, in this one process, and is timed
per optimizer step after warm-up steps. Writes benchmarks/results/sft_speed.json.

    python benchmarks/sft_speed.py [--steps 8] [--default-steps 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

BATCH, TOKENS, WARMUP = 4, 128, 2
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
RESULTS = Path(__file__).parent / "results" / "sft_speed.json"


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)

    def summary(self, warmup: int) -> dict:
        timed = self.times[warmup:]
        per_step = sum(timed) / len(timed)
        return {
            "s_per_step": round(per_step, 3),
            "tokens_per_s": round(BATCH * TOKENS / per_step, 1),
            "timed_steps": len(timed),
        }


def long_texts() -> list[dict]:
    """Rows of raw text well over 128 tokens (truncated to exactly 128), so every batch is 4 x 128."""
    from posttrain.data.sources import read_rows

    answers = [row.data["messages"][-1]["content"] for row in read_rows("builtin:pirate_sft")]
    return [{"text": " ".join(answers[i : i + 6])} for i in range(0, len(answers) - 6, 3)]


def run_posttrain(model_dir: str, quantization: str, steps: int, out: Path) -> dict:
    from posttrain.methods import sft
    from posttrain.methods.common import run_method
    from posttrain.recipe import build_recipe

    data = out / "texts.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in long_texts()))
    recipe = build_recipe(
        {
            "method": "sft",
            "model": {"name": model_dir, "quantization": quantization},
            "data": {"train": str(data), "max_length": TOKENS, "on_too_long": "truncate"},
            "train": {
                "max_steps": steps,
                "per_device_train_batch_size": BATCH,
                "activation_checkpointing": False,
                "logging_steps": 1000,
                "save_strategy": "no",
                "report_to": "none",
            },
            "output_dir": str(out / f"posttrain-{quantization}"),
        }
    )
    timer = StepTimer()
    run_method(sft, recipe, echo=lambda _: None, before_train=lambda trainer: trainer.add_callback(timer))
    return timer.summary(WARMUP)


def run_plain_trl(model_dir: str, quantized: bool, trl_defaults: bool, steps: int, out: Path) -> dict:
    """What a user writes with TRL alone. With trl_defaults, only what any script must set is set."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    settings = {
        "output_dir": str(out / "plain"),
        "max_steps": steps,
        "per_device_train_batch_size": BATCH,
        "max_length": TOKENS,
        "logging_steps": 1000,
        "save_strategy": "no",
        "report_to": "none",
        "learning_rate": 2e-4,
    }
    if not trl_defaults:
        settings |= {"bf16": False, "activation_checkpointing": False, "dataloader_pin_memory": False}
    quant = (
        BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.float32,
        )
        if quantized
        else None
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, quantization_config=quant, device_map={"": "cpu"} if quantized else None
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**settings),
        train_dataset=Dataset.from_list(long_texts()),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
    )
    if quantized and not trl_defaults:  # TRL casts QLoRA adapters to bf16; an fp32 run needs them back in fp32
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.summary(1 if trl_defaults else WARMUP)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10, help="steps per variant (the first 2 are warm-up)")
    parser.add_argument("--default-steps", type=int, default=3, help="steps with TRL defaults (slow on CPU)")
    args = parser.parse_args()

    from posttrain.cli import quiet_libraries
    from posttrain.models.loading import resolve_model

    quiet_libraries()
    model_dir = resolve_model("smollm2-135m").base
    variants = {
        "posttrain LoRA (fp32)": lambda out: run_posttrain(model_dir, "none", args.steps, out),
        "plain TRL, same settings, LoRA": lambda out: run_plain_trl(model_dir, False, False, args.steps, out),
        "posttrain QLoRA nf4 (fp32 compute)": lambda out: run_posttrain(model_dir, "nf4", args.steps, out),
        "plain TRL, same settings, QLoRA": lambda out: run_plain_trl(model_dir, True, False, args.steps, out),
        "plain TRL defaults, LoRA": lambda out: run_plain_trl(model_dir, False, True, args.default_steps, out),
        "plain TRL defaults, QLoRA": lambda out: run_plain_trl(model_dir, True, True, args.default_steps, out),
    }
    results = {}
    for name, variant in variants.items():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                results[name] = variant(Path(tmp))
            except Exception as err:  # a crash is a result too (TRL's defaults on a quantized CPU model)
                results[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        print(f"{name:<38} {results[name]}", flush=True)
    report = {
        "benchmark": "sft_speed",
        "model": "smollm2-135m",
        "batch": f"{BATCH} x {TOKENS} tokens",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "torch": torch.__version__,
        "results": results,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
