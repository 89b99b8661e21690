"""Training speed on smollm2-135m: posttrain vs a plain TRL script with the same settings (and, for SFT, with
TRL's defaults), LoRA and 4-bit QLoRA, all in this one process on this machine.

Every variant trains LoRA r=16 on all linear layers with batch 4 (SFT: 4 x 128 tokens; preference methods: 4
pairs of builtin:pirate_prefs; kto: 4 rows of builtin:pirate_feedback) and is timed per optimizer step after
warm-up steps.
Writes benchmarks/results/train_speed.json.

    python benchmarks/train_speed.py [--methods sft reward dpo orpo kto] [--steps 10] [--default-steps 3]

`--compare batching checkpointing` instead runs posttrain's SFT defaults against what they replaced, alternating
the variants round by round in this one process so that machine load falls on both alike:
- batching: padded batches (the old default) vs padding-free ones, on a long-tailed instruction set, in real
  (non-pad) tokens per second;
- checkpointing: activation checkpointing on (TRL's default) vs `auto` (off where the plan says the run fits).
Writes benchmarks/results/sft_defaults_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

BATCH, TOKENS, WARMUP = 4, 128, 2
LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "target_modules": "all-linear"}
RESULTS = Path(__file__).parent / "results" / "train_speed.json"
COMPARE_RESULTS = Path(__file__).parent / "results" / "sft_defaults_speed.json"


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times: list[float] = []
        self._start = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)

    def summary(self, warmup: int, tokens_per_step: int | None) -> dict:
        timed = self.times[warmup:]
        per_step = sum(timed) / len(timed)
        result = {"s_per_step": round(per_step, 3), "timed_steps": len(timed)}
        if tokens_per_step:
            result["tokens_per_s"] = round(tokens_per_step / per_step, 1)
        else:
            result["pairs_per_s"] = round(BATCH / per_step, 2)
        return result


def long_texts() -> list[dict]:
    """Rows of raw text well over 128 tokens (truncated to exactly 128), so every batch is 4 x 128."""
    from posttrain.data.sources import read_rows

    answers = [row.data["messages"][-1]["content"] for row in read_rows("builtin:pirate_sft")]
    return [{"text": " ".join(answers[i : i + 6])} for i in range(0, len(answers) - 6, 3)]


def run_posttrain(method: str, model_dir: str, quantization: str, steps: int, out: Path) -> dict:
    from posttrain.methods.common import run_method
    from posttrain.recipe import build_recipe

    texts = out / "texts.jsonl"
    texts.write_text("".join(json.dumps(row) + "\n" for row in long_texts()))
    recipe = build_recipe(
        {
            "method": method,
            "model": {"name": model_dir, "quantization": quantization, "chat_template": "chatml"},
            "data": {
                "train": {"sft": str(texts), "kto": "builtin:pirate_feedback"}.get(method, "builtin:pirate_prefs"),
                "on_too_long": "truncate",
                "max_length": TOKENS if method == "sft" else 256,
            },
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
    run_method(recipe, echo=lambda _: None, before_train=lambda trainer: trainer.add_callback(timer))
    return timer.summary(WARMUP, BATCH * TOKENS if method == "sft" else None)


def plain_trl_parts(method: str):
    """(config class, trainer class, model class, LoRA task, training rows) a plain TRL script would use."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from trl import DPOConfig, DPOTrainer, KTOConfig, KTOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

    from posttrain.data.feedback import normalise_feedback
    from posttrain.data.preferences import normalise_preferences
    from posttrain.data.sources import read_rows
    from posttrain.trl_compat import ORPOConfig, ORPOTrainer

    if method == "sft":
        return SFTConfig, SFTTrainer, AutoModelForCausalLM, "CAUSAL_LM", long_texts()
    if method == "kto":
        _, _, rows = normalise_feedback(read_rows("builtin:pirate_feedback"))
        return KTOConfig, KTOTrainer, AutoModelForCausalLM, "CAUSAL_LM", rows
    _, pairs = normalise_preferences(read_rows("builtin:pirate_prefs"))
    return {
        "reward": (RewardConfig, RewardTrainer, AutoModelForSequenceClassification, "SEQ_CLS", pairs),
        "dpo": (DPOConfig, DPOTrainer, AutoModelForCausalLM, "CAUSAL_LM", pairs),
        "orpo": (ORPOConfig, ORPOTrainer, AutoModelForCausalLM, "CAUSAL_LM", pairs),
    }[method]


def run_plain_trl(method: str, model_dir: str, quantized: bool, trl_defaults: bool, steps: int, out: Path) -> dict:
    """What a user writes with TRL alone. With trl_defaults, only what any script must set is set."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, BitsAndBytesConfig

    from posttrain.models.templates import read_template

    config_cls, trainer_cls, model_cls, task, rows = plain_trl_parts(method)
    settings = {
        "output_dir": str(out / "plain"),
        "max_steps": steps,
        "per_device_train_batch_size": BATCH,
        "max_length": TOKENS if method == "sft" else 256,
        "logging_steps": 1000,
        "save_strategy": "no",
        "report_to": "none",
        "learning_rate": 1e-4,
    }
    if method == "orpo":
        settings["remove_unused_columns"] = False
    if trl_defaults:  # TRL's bf16 default refuses to start on a CPU without it unless told to use the CPU
        settings["use_cpu"] = not torch.cuda.is_available()
    else:
        settings |= {"bf16": False, "activation_checkpointing": False, "dataloader_pin_memory": False}
    keep = ["score"] if task == "SEQ_CLS" else None
    quant = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
        llm_int8_skip_modules=keep,
    )
    model = model_cls.from_pretrained(
        model_dir,
        dtype=torch.float32,
        quantization_config=quant if quantized else None,
        device_map={"": "cpu"} if quantized else None,
        **({"num_labels": 1} if task == "SEQ_CLS" else {}),
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = read_template("chatml")
    tokenizer.pad_token = tokenizer.unk_token
    model.config.pad_token_id = tokenizer.pad_token_id
    trainer = trainer_cls(
        model=model,
        args=config_cls(**settings),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(task_type=task, modules_to_save=keep, **LORA),
    )
    if quantized and not trl_defaults:  # TRL casts QLoRA adapters to bf16; an fp32 run needs them back in fp32
        for param in trainer.model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.summary(1 if trl_defaults else WARMUP, BATCH * TOKENS if method == "sft" else None)


# ---------------------------------------------------------------- posttrain's SFT defaults against the old ones


def long_tailed_conversations(count: int = 160, seed: int = 0) -> list[dict]:
    """Multi-turn conversations of builtin:pirate_sft exchanges, the number of exchanges log-normal (median 3, up
    to 16): with ChatML on smollm2-135m, median about 200 tokens, a tail to 1024."""
    import random

    from posttrain.data.sources import read_rows

    exchanges = [row.data["messages"][-2:] for row in read_rows("builtin:pirate_sft")]
    rng = random.Random(seed)
    rows = []
    for i in range(count):
        turns = max(1, min(16, round(rng.lognormvariate(1.1, 0.9))))
        rows.append({"messages": [m for j in range(turns) for m in exchanges[(7 * i + j) % len(exchanges)]]})
    return rows


class RealTokens:
    """Wraps a trainer's collator and keeps the real (non-pad) tokens of every training batch, in order."""

    def __init__(self, collate):
        self.collate, self.per_batch = collate, []

    def __call__(self, features):
        batch = self.collate(features)
        mask = batch.get("attention_mask")
        self.per_batch.append(int(mask.sum()) if mask is not None else batch["input_ids"].numel())
        return batch


def run_sft_variant(model_dir: str, data: Path, train: dict, steps: int, out: Path) -> dict:
    from posttrain.methods.common import run_method
    from posttrain.recipe import build_recipe

    recipe = build_recipe(
        {
            "method": "sft",
            "model": {"name": model_dir, "quantization": "nf4", "chat_template": "chatml"},
            "data": {"train": str(data), "max_length": 1024},
            "train": {"max_steps": steps, "per_device_train_batch_size": BATCH, "logging_steps": 1000}
            | {"save_strategy": "no", "report_to": "none"}
            | train,
            "output_dir": str(out / "run"),
        }
    )
    timer, seen, plan = StepTimer(), {}, []

    def hook(trainer):
        trainer.add_callback(timer)
        trainer.data_collator = seen["tokens"] = RealTokens(trainer.data_collator)
        seen["checkpointing"] = trainer.args.activation_checkpointing

    run_method(recipe, echo=plan.append, before_train=hook)
    timed, real = timer.times[1:], seen["tokens"].per_batch[1:steps]  # the first step warms up
    return {
        "s_per_step": round(sum(timed) / len(timed), 2),
        "real_tokens_per_step": round(sum(real) / len(real), 1),
        "real_tokens_per_s": round(sum(real) / sum(timed), 1),
        "activation_checkpointing": seen["checkpointing"],
        "plan": [line for line in plan if line.startswith(("batches", "memory"))],
    }


def compare_defaults(model_dir: str, which: list[str], rounds: int, steps: int) -> dict:
    variants = {}
    if "batching" in which:
        variants |= {
            "padded batches (old default)": ("long_tailed", {"padding_free": False, "activation_checkpointing": False}),
            "padding-free batches (default)": (
                "long_tailed",
                {"padding_free": True, "activation_checkpointing": False},
            ),
        }
    if "checkpointing" in which:
        variants |= {
            "checkpointing on (TRL default)": ("pirate", {"activation_checkpointing": True}),
            "checkpointing auto (default)": ("pirate", {"activation_checkpointing": "auto"}),
        }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        files = {"long_tailed": Path(tmp) / "long_tailed.jsonl", "pirate": Path(tmp) / "pirate.jsonl"}
        files["long_tailed"].write_text("".join(json.dumps(r) + "\n" for r in long_tailed_conversations()))
        files["pirate"].write_text(
            Path(__file__).parents[1].joinpath("posttrain/data/builtin/pirate_sft.jsonl").read_text()
        )
        for number in range(rounds):
            for name, (data, train) in variants.items():
                with tempfile.TemporaryDirectory() as out:
                    result = run_sft_variant(model_dir, files[data], train, steps, Path(out))
                result["measured"] = time.strftime("%Y-%m-%d %H:%M:%S")
                runs[name].append(result)
                print(f"round {number + 1} {name:<34} {result}", flush=True)
    summary = {}
    for name, results in runs.items():
        timed = sum(r["s_per_step"] for r in results) / len(results)
        real = sum(r["real_tokens_per_s"] for r in results) / len(results)
        summary[name] = {"s_per_step": round(timed, 2), "real_tokens_per_s": round(real, 1), "rounds": results}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["sft", "reward", "dpo", "orpo", "kto"])
    parser.add_argument("--steps", type=int, default=10, help="steps per variant (the first 2 are warm-up)")
    parser.add_argument("--default-steps", type=int, default=3, help="steps with TRL defaults (slow on CPU)")
    parser.add_argument(
        "--variants",
        nargs="*",
        default=[],
        help="only the variants whose name contains one of these (merged into an existing results file)",
    )
    parser.add_argument("--compare", nargs="*", choices=["batching", "checkpointing"], help="see above")
    parser.add_argument("--rounds", type=int, default=2, help="--compare: rounds of every variant, alternating")
    args = parser.parse_args()

    from posttrain.cli.support import quiet_libraries
    from posttrain.models.loading import resolve_model

    quiet_libraries()
    model_dir = resolve_model("smollm2-135m").base
    if args.compare:
        started = os.getloadavg()
        results = compare_defaults(model_dir, args.compare, args.rounds, args.steps)
        report = {
            "benchmark": "sft_defaults_speed",
            "model": "smollm2-135m, nf4, LoRA r=16 all-linear, fp32, batch 4",
            "command": "python benchmarks/train_speed.py " + " ".join(sys.argv[1:]),
            "load_average_1_5_15min": {"start": started, "end": os.getloadavg()},
            "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads()},
            "torch": torch.__version__,
            "results": results,
        }
        COMPARE_RESULTS.parent.mkdir(exist_ok=True)
        COMPARE_RESULTS.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {COMPARE_RESULTS}")
        return
    variants = {}
    for method in args.methods:
        variants |= {
            f"{method}: posttrain LoRA": lambda out, m=method: run_posttrain(m, model_dir, "none", args.steps, out),
            f"{method}: plain TRL, same settings, LoRA": lambda out, m=method: run_plain_trl(
                m, model_dir, False, False, args.steps, out
            ),
            f"{method}: posttrain QLoRA nf4": lambda out, m=method: run_posttrain(m, model_dir, "nf4", args.steps, out),
            f"{method}: plain TRL, same settings, QLoRA": lambda out, m=method: run_plain_trl(
                m, model_dir, True, False, args.steps, out
            ),
        }
    if "sft" in args.methods:
        variants |= {
            "sft: plain TRL defaults, LoRA": lambda out: run_plain_trl(
                "sft", model_dir, False, True, args.default_steps, out
            ),
            "sft: plain TRL defaults, QLoRA": lambda out: run_plain_trl(
                "sft", model_dir, True, True, args.default_steps, out
            ),
        }
    if args.variants:
        variants = {name: run for name, run in variants.items() if any(part in name for part in args.variants)}
    previous = json.loads(RESULTS.read_text())["results"] if args.variants and RESULTS.exists() else {}
    results = {}
    for name, variant in variants.items():
        with tempfile.TemporaryDirectory() as tmp:
            try:
                results[name] = variant(Path(tmp))
            except Exception as err:  # a crash is a result too (TRL's defaults on a quantized CPU model)
                results[name] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        results[name]["measured"] = time.strftime("%Y-%m-%d %H:%M")
        print(f"{name:<46} {results[name]}", flush=True)
    report = {
        "benchmark": "train_speed",
        "model": "smollm2-135m",
        "batch": f"sft: {BATCH} x {TOKENS} tokens; preference methods: {BATCH} pairs of builtin:pirate_prefs; "
        f"kto: {BATCH} rows of builtin:pirate_feedback",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "torch": torch.__version__,
        "results": previous | results,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
