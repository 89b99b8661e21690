"""`posttrain merge`: a run's LoRA adapter merged into 16-bit base weights, saved as a plain transformers folder.

The 4-bit base a run trained on is not the merge target: folding the adapter into quantized weights would round
much of it away, and the result would still need bitsandbytes. So the base is reloaded in 16 bits (or fp32), PEFT
applies the adapter, and merge_and_unload folds it in. Before anything is written, the merged model's logits on a
few prompts are compared with the unmerged model's, so a merge that changed the model is never saved.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from posttrain.errors import UserError
from posttrain.runs import locks

# Root-mean-square of the logit difference between merged and unmerged model, relative to the logits' own RMS.
# Rounding W + BA to the save dtype (8 mantissa bits in bf16, 11 in fp16) is the only difference expected, and it is
# as large as the dtype's own rounding noise: measured against fp32 logits, SmolLM2-135M's unmerged model is off
# by 0.03 in bf16 and 0.004 in fp16, and its merge by the same. The tolerances leave about twice that.
TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2, "bf16": 6e-2}
CHECK_PROMPTS = ["What is the capital of France?", "Write two lines about the sea.", "Why is the sky blue?"]
DTYPES = ("auto", "fp16", "bf16", "fp32")


def merge_run(run_name: str, output: Path, dtype: str = "auto", echo: Callable[[str], None] = print) -> dict:
    """Merge, verify, then save into `output` (a new or empty folder); returns the verification numbers."""
    from peft import PeftModel

    from posttrain.models.loading import load_base_model, load_tokenizer

    ref = check_mergeable(run_name)
    output.parent.mkdir(parents=True, exist_ok=True)
    locks.acquire(locks.sibling_lock(output), f"--output {output}")  # one writer; held until the process ends
    check_output_free(output)
    dtype = merge_dtype(dtype, ref.base)
    tokenizer = load_tokenizer(ref, "model")
    echo(f"merging the adapter of {ref.adapter.parent} into {ref.name} loaded in {dtype} (not 4-bit)")
    model = PeftModel.from_pretrained(load_base_model(ref, "none", False, dtype), str(ref.adapter)).eval()
    check = compare_logits(model, tokenizer, dtype)
    merged = check.pop("merged")
    echo(
        f"check: merged vs unmerged logits on {check['prompts']} prompts: relative RMS difference "
        f"{check['relative_rms_diff']:.2e} (tolerance {check['tolerance']:.0e} for {dtype}; the adapter itself moves "
        f"them by {check['adapter_effect']:.2e}), largest difference {check['max_abs_diff']:.3g}"
    )
    if not check["passed"]:
        raise RuntimeError(f"the merged model does not match the adapter model: {check}; nothing was written.")
    save_merged(merged, tokenizer, output, {"run": str(ref.adapter.parent), "base": ref.name, "dtype": dtype} | check)
    echo(f"done: {output} loads with transformers alone (AutoModelForCausalLM.from_pretrained)")
    return check


def check_mergeable(run_name: str):
    from posttrain.models.loading import looks_like_path, method_of_run, resolve_model, shipped_run_command

    if looks_like_path(run_name) and not Path(run_name).expanduser().is_dir():
        writer = shipped_run_command(run_name)
        fix = f"`{writer}` writes it: run that first." if writer else "Check the path."
        raise UserError(f"{run_name}: no such run folder; merge takes the output_dir of a training run. {fix}")
    ref = resolve_model(run_name)
    if not ref.is_run:
        raise UserError(f"{run_name} is a model, not a run folder with an adapter: there is nothing to merge into it.")
    if method_of_run(ref.adapter.parent) == "reward":
        raise UserError(
            f"{run_name} is a reward run: its adapter ends in a score head, not a language-model head, so merging it "
            "gives no model to chat with. Use the run folder as it is: `posttrain eval accuracy RUN --data FILE`, "
            "`posttrain eval winrate A B --judge RUN`, or ppo.reward in a PPO recipe."
        )
    return ref


def check_output_free(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"--output {output} exists and is not an empty folder; merge writes only into a new one.")


def merge_dtype(requested: str, base: str) -> str:
    """auto: the dtype the base was saved in (fp16 for Llama 2); an fp32 base (tiny-llama2) stays fp32."""
    from transformers import AutoConfig

    from posttrain.models.loading import hub_errors

    if requested not in DTYPES:
        raise UserError(f"--dtype must be one of {', '.join(DTYPES)}, got {requested!r}.")
    if requested != "auto":
        return requested
    with hub_errors(base):
        config = AutoConfig.from_pretrained(base)
    saved = str(getattr(config, "dtype", None) or "float16").removeprefix("torch.")
    return {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}.get(saved, "fp16")


def compare_logits(model, tokenizer, dtype: str) -> dict:
    """Logits of the adapter model (and, for scale, of the bare base), then merge_and_unload() in place and the
    same logits again."""
    import torch

    from posttrain.inference.generation import encode_chats

    batch = encode_chats(tokenizer, [[{"role": "user", "content": p}] for p in CHECK_PROMPTS]).to(model.device)
    real = batch["attention_mask"].bool()  # padding positions are not compared
    with torch.no_grad():
        before = model(**batch).logits.float()[real]
        with model.disable_adapter():
            base = model(**batch).logits.float()[real]
        merged = model.merge_and_unload()
        after = merged(**batch).logits.float()[real]
    relative = relative_rms(after, before)
    return {
        "merged": merged,
        "prompts": len(CHECK_PROMPTS),
        "max_abs_diff": (after - before).abs().max().item(),
        "relative_rms_diff": relative,
        "adapter_effect": relative_rms(base, before),
        "tolerance": TOLERANCE[dtype],
        "passed": relative <= TOLERANCE[dtype],
    }


def relative_rms(logits, reference) -> float:
    return ((logits - reference).pow(2).mean().sqrt() / reference.pow(2).mean().sqrt()).item()


def save_merged(merged, tokenizer, output: Path, provenance: dict) -> None:
    """Safetensors, tokenizer with its chat template, and a generation config that stops at the end of a turn;
    written beside `output` and renamed into place, so a crash never leaves a half-written model."""
    from posttrain.runs import library_versions

    merged.config.pad_token_id = tokenizer.pad_token_id
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    merged.generation_config.eos_token_id = tokenizer.eos_token_id
    merged.generation_config.bos_token_id = tokenizer.bos_token_id
    tokenizer.padding_side = "left"  # what batched generation, this folder's purpose, needs
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    record = provenance | {"versions": library_versions()}
    (staging / "posttrain-merge.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    if output.is_dir():
        output.rmdir()  # empty, checked before merging
    staging.rename(output)
    locks.release(locks.sibling_lock(output))
