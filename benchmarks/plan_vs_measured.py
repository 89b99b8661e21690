"""`posttrain plan`'s predicted peak against the measured one (torch.cuda.max_memory_allocated), per method, on a
Llama-2-7B-shaped model with random weights (memory does not depend on the weights).

The model is the shipped Llama 2 7B config (posttrain/models/configs/llama-2-7b.json), optionally with fewer layers,
saved in fp16 with the tiny-llama2 tokenizer. Each method runs its shipped recipes/llama2-7b/*-qlora-t4.yaml for
a few steps through the CLI, in this process, on synthetic rows just under the recipe's max_length (so the
sequences are as long as the plan assumes), in fp16 as on a T4; `--cap-gib 15` also caps PyTorch's memory at a
T4's. Without a GPU the commands still run (in fp32, on the CPU) and only the predictions are written; a small
shape (`--config` of tiny-llama2) checks the script itself on a CPU in minutes.
Writes benchmarks/results/plan_vs_measured.json.

    python benchmarks/plan_vs_measured.py [--layers N] [--methods sft reward dpo orpo kto rs ppo grpo] [--cap-gib 15]
        [--config CONFIG.json] [--work FOLDER]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import tempfile
from pathlib import Path

import torch

from posttrain.methods import METHODS
from posttrain.plan.estimate import response_room

RESULTS = Path(__file__).parent / "results" / "plan_vs_measured.json"
CONFIG = Path(__file__).parent.parent / "posttrain" / "models" / "configs" / "llama-2-7b.json"
TEMPLATE_ROOM = 32  # tokens left for the chat template around the synthetic text (it adds about 20)


def build_model(folder: Path, config_file: Path, layers: int | None) -> None:
    """A model of the config's shape (with `layers` decoder layers) and random fp16 weights, with tiny-llama2's
    tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from posttrain.models.loading import resolve_model

    shape = json.loads(config_file.read_text())
    config = LlamaConfig.from_dict(shape | ({"num_hidden_layers": layers} if layers else {}))
    torch.set_default_dtype(torch.float16)
    try:
        model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_model("tiny-llama2").tokenizer).save_pretrained(folder)
    del model


def text_of(tokenizer, tokens: int) -> str:
    """A text of about `tokens` tokens."""
    word = " arr"
    per_word = len(tokenizer(word * 100, add_special_tokens=False)["input_ids"]) / 100
    return (word * int(tokens / per_word)).strip()


def write_rows(path: Path, method: str, tokenizer) -> Path:
    """Rows that fill the shipped recipe's max_length: conversations (sft; with a label, kto), pairs (reward, dpo,
    orpo) or prompts that leave room for the sampled answer (rs, ppo, grpo)."""
    from posttrain.recipe import load_recipe

    recipe = load_recipe(f"llama2-7b/{method}-qlora-t4")
    length = recipe.data.max_length
    if method in ("sft", "kto"):
        text = text_of(tokenizer, length // 2 - TEMPLATE_ROOM // 2)
        row = {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": text}]}
        if method == "kto":
            row["label"] = True  # KTO reads one sequence per row, whatever its label
    elif method in ("rs", "ppo", "grpo"):
        room = response_room(recipe)
        row = {"messages": [{"role": "user", "content": text_of(tokenizer, length - room - TEMPLATE_ROOM)}]}
    else:
        prompt = length // 3
        row = {"prompt": text_of(tokenizer, prompt), "chosen": text_of(tokenizer, length - prompt - TEMPLATE_ROOM)}
        row["rejected"] = row["chosen"] + " no"
    path.write_text("".join(json.dumps(row) + "\n" for _ in range(32)), encoding="utf-8")
    return path


def settings_of(method: str, base: Path, work: Path, rows: Path) -> list[str]:
    """--set overrides that point a shipped recipe at the random model, the synthetic rows and the earlier runs."""
    precision = "model.precision=fp16" if torch.cuda.is_available() else "model.precision=auto"
    settings = [precision, f"data.train={rows}"]
    about = METHODS[method]
    if about.data == "preference":
        settings.append(f"data.eval={rows}")
    if about.train_config is not None:
        settings += ["train.max_steps=3", "train.save_steps=1000", "train.logging_steps=1"]
    settings.append(f"model.name={work / 'sft' if 'sft' in about.starts_from else base}")
    if method == "rs":
        # a random model's answers never end: keep them, or rs would leave every prompt out
        settings += [f"rs.reward={work / 'reward'}", "rs.iterations=1", "rs.keep_cut_off=true"]
    if method == "ppo":
        settings += [f"ppo.reward={work / 'reward'}", "ppo.steps=2"]
    if method == "grpo":  # every answer runs to max_completion_length: the generation phase's peak
        settings += [f"grpo.rewards=[{{run: {work / 'reward'}}}]", "train.generation_kwargs={min_new_tokens: 256}"]
    if method in ("rs", "ppo"):
        settings.append(f"{method}.eval_prompts=null")  # the held-out check after training would add its own peak
    return settings


def predicted(recipe_name: str, settings: list[str], output: Path) -> dict:
    from posttrain.plan.estimate import Models, estimate
    from posttrain.plan.memory import GIB
    from posttrain.precision import choose_precision, detect_hardware
    from posttrain.recipe import load_recipe

    recipe = load_recipe(recipe_name, settings + [f"output_dir={output}"])
    precision = choose_precision(recipe.model.precision, detect_hardware())
    result = estimate(recipe, Models.of(recipe), precision)
    return {
        "precision": precision,
        "predicted_gib": round(result.total / GIB, 2),
        "peak_phase": result.peak.name,
        "phases_gib": {phase.name: round(phase.total / GIB, 2) for phase in result.phases},
    }


def measure(method: str, settings: list[str], output: Path) -> dict:
    """Run the command here; its peak allocated memory (CUDA) and whether it finished."""
    from typer.testing import CliRunner

    from posttrain.cli import app

    recipe = f"llama2-7b/{method}-qlora-t4"
    sets = [part for setting in settings for part in ("--set", setting)]
    result = predicted(recipe, settings, output)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    run = CliRunner().invoke(app, [method, recipe, *sets, "--output-dir", str(output)])
    result["exit_code"] = run.exit_code
    if run.exit_code != 0:
        result["output_tail"] = (run.output + repr(run.exception))[-2000:]
    if torch.cuda.is_available():
        measured = torch.cuda.max_memory_allocated() / 2**30
        result |= {
            "measured_gib": round(measured, 2),
            "predicted_over_measured": round(result["predicted_gib"] / measured, 3),
        }
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG, help="config.json of the shape (default: Llama 2 7B)")
    parser.add_argument("--layers", type=int, help="decoder layers, if fewer than the config's (7B: 32)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--cap-gib", type=float, help="cap PyTorch's GPU memory at this many GiB (a T4: 15)")
    parser.add_argument("--work", type=Path, help="folder for the model and the runs (default: a temporary one)")
    args = parser.parse_args()
    if args.cap_gib and torch.cuda.is_available():
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.cap_gib / total))
    work = args.work or Path(tempfile.mkdtemp(prefix="plan-vs-measured-"))
    base = work / "model"
    if not (base / "config.json").is_file():
        build_model(base, args.config, args.layers)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    results = {}
    needed = set(args.methods).union(*(METHODS[method].starts_from for method in args.methods))
    for method in METHODS:  # the table lists a method after the ones it starts from
        if method in needed:
            rows = write_rows(work / f"{method}.jsonl", method, tokenizer)
            shutil.rmtree(work / method, ignore_errors=True)
            results[method] = measure(method, settings_of(method, base, work, rows), work / method)
            print(method, json.dumps(results[method]), flush=True)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    result = {
        "machine": f"{platform.machine()}, {gpu}",
        "model": f"{args.config} with {args.layers or 'all its'} layers, random fp16 weights, nf4 in the recipes",
        "cap_gib": args.cap_gib,
        "methods": results,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
