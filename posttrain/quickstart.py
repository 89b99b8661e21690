"""`posttrain quickstart`: the whole SFT loop on the embedded default model, in a few minutes on a CPU.

SmolLM2-135M-Instruct learns the persona of Captain Byte, a pirate who opens every answer with "Arr!" and
closes with "Fair winds!". Its answers to held-out questions are shown before and after training.
"""

from __future__ import annotations

import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from posttrain.data.sources import read_rows
from posttrain.inference.generation import answer
from posttrain.methods.common import run_method
from posttrain.recipe import load_recipe

RECIPE = "smollm2-135m/sft"
HELD_OUT = "builtin:pirate_heldout"
SHOWN_PROMPTS = 3


def run_quickstart(output_dir: Path, *, max_steps: int, echo: Callable[[str], None]) -> dict:
    started = time.time()
    recipe = load_recipe(RECIPE, [f"output_dir={output_dir}", f"train.max_steps={max_steps}"])
    prompts = [row.data["prompt"] for row in read_rows(HELD_OUT)][:SHOWN_PROMPTS]
    echo(f"posttrain quickstart: teach {recipe.model.name} a pirate persona with LoRA ({RECIPE} recipe)\n")
    trainers = []

    def show_before(trainer) -> None:
        trainers.append(trainer)
        echo("Before training, on questions it will not see in training:")
        show(prompts, answer(trainer.model, trainer.processing_class, prompts), echo)
        echo(f"Training {max_steps} steps on builtin:pirate_sft ...")

    metrics = run_method(recipe, echo=echo, before_train=show_before)
    echo("\nAfter training, the same questions:")
    after = answer(trainers[0].model, trainers[0].processing_class, prompts)
    show(prompts, after, echo)
    minutes = (time.time() - started) / 60
    echo(
        f"Done in {minutes:.1f} min. Train loss {metrics['train'].get('train_loss', 0):.3f}; "
        f"eval loss {metrics.get('eval', {}).get('eval_loss', float('nan')):.3f}."
    )
    echo(f"Run folder: {output_dir} (adapter/, recipe.yaml, metrics.json, checkpoints/, logs/)")
    echo(
        "Next:\n"
        f"  posttrain sft {RECIPE} --output-dir runs/my-sft      # the same run, as a recipe you can edit\n"
        "  posttrain recipes                                      # every shipped recipe\n"
        "  posttrain data inspect builtin:pirate_sft              # look at the training data"
    )
    return {"metrics": metrics, "prompts": prompts, "after": after}


def free_run_folder(wanted: Path) -> Path:
    """`wanted`, or the first of wanted-2, wanted-3 ... that does not exist yet: a rerun never replaces a run."""
    candidate, number = wanted, 1
    while candidate.exists():
        number += 1
        candidate = wanted.with_name(f"{wanted.name}-{number}")
    return candidate


def show(prompts: list[str], answers: list[str], echo: Callable[[str], None]) -> None:
    for prompt, reply in zip(prompts, answers, strict=True):
        echo(f"  Q: {prompt}")
        echo(textwrap.fill(reply or "(empty)", width=100, initial_indent="  A: ", subsequent_indent="     "))
    echo("")
