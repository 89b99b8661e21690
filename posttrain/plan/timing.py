"""How long a recipe would run on a T4: the tokens it trains on, scores and generates, over an ASSUMED throughput.

No GPU has run posttrain yet, so none of these speeds is measured: they are round figures for a 7B Llama in 4 bits
on a 16 GB T4 in fp16, scaled to other sizes by parameter count. Every sequence is counted at the recipe's
`data.max_length` (responses at their `max_new_tokens`), so the token counts are upper bounds and the time is an
estimate of the slow end. `posttrain plan` prints it; notebooks/build.py adds up a notebook's commands with it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from posttrain.methods import METHODS
from posttrain.plan.memory import ModelShape
from posttrain.recipe import Recipe
from posttrain.sections import as_sources

# The assumed T4 speeds for Llama 2 7B in 4 bits (6.7 billion parameters). Not measured.
SEVEN_B = 6.74e9
TRAINED_PER_S = 250  # tokens through forward + backward with activation checkpointing
FORWARD_PER_S = 1500  # tokens through a forward pass alone (reward scores, reference log-probabilities)
DECODE_STEPS_PER_S = 12.5  # generation steps (one new token for every sequence of a batch of up to 16)
LOAD_S = 120  # reading and quantizing the base from the local cache, once per command
ASSUMPTION = (
    "assumed T4 speeds for 7B in 4 bits, not measured: 250 tokens/s trained, 1,500 scored, 12.5 generation "
    "steps/s (a batch of up to 16), 2 min to load the model; every sequence at its full length"
)

# Rows of the hub splits the shipped recipes name, so that an epoch can be counted offline.
HUB_ROWS = {
    "Anthropic/hh-rlhf:train": 160_800,
    "Anthropic/hh-rlhf:test": 8_552,
    "HuggingFaceH4/no_robots:train": 9_500,
    "HuggingFaceH4/no_robots:test": 500,
    "HuggingFaceH4/ultrafeedback_binarized:train_prefs": 61_135,
    "HuggingFaceH4/ultrafeedback_binarized:test_prefs": 2_000,
    "trl-lib/kto-mix-14k:train": 13_500,
    "trl-lib/kto-mix-14k:test": 1_500,
}
SLICE = re.compile(r"^(?P<split>[^\[]+)\[(?P<start>-?\d*%?):(?P<end>-?\d*%?)\]$")

# Per example of a TRL-trained method: (sequences trained, sequences through a forward pass alone).
PASSES = {"sft": (1, 0), "reward": (2, 0), "dpo": (2, 2), "orpo": (2, 0), "kto": (1, 3)}


@dataclass
class Work:
    """What a run does, in tokens and generation steps."""

    trained: float = 0.0
    forward: float = 0.0
    decode_steps: float = 0.0
    loads: int = 1

    def seconds(self, shape: ModelShape | None = None) -> float:
        scale = parameters(shape) / SEVEN_B if shape else 1.0
        busy = self.trained / TRAINED_PER_S + self.forward / FORWARD_PER_S + self.decode_steps / DECODE_STEPS_PER_S
        return scale * (busy + self.loads * LOAD_S)


def parameters(shape: ModelShape) -> float:
    per_layer = sum(i * o for i, o in shape.linears().values())
    return shape.layers * per_layer + shape.vocab * shape.hidden * (1 if shape.tied_embeddings else 2)


def _slice_rows(total: int, start: str, end: str) -> int:
    def position(text: str, default: int) -> int:
        if not text:
            return default
        value = total * int(text[:-1]) // 100 if text.endswith("%") else int(text)
        return max(0, min(total, value + total if value < 0 else value))

    return max(0, position(end, total) - position(start, 0))


def split_rows(path: str) -> int | None:
    """Rows of one data path: a local file or builtin set (read), a known hub split (with a slice), else None."""
    name, _, split = path.partition(":")
    if "/" in name and not name.startswith((".", "/")) and split:  # a hub id
        sliced = SLICE.match(split)
        total = HUB_ROWS.get(f"{name}:{sliced['split'] if sliced else split}")
        if total is None or not sliced:
            return total
        return _slice_rows(total, sliced["start"], sliced["end"])
    from posttrain.data.sources import read_rows

    try:
        return len(read_rows(path))
    except Exception:  # a hub id without a split, a missing file: the plan's other checks report it
        return None


def data_rows(spec) -> int | None:
    """Rows a data key yields after each source's max_rows and weight; None when one source cannot be counted."""
    total = 0.0
    for source in as_sources(spec):
        rows = split_rows(source.path)
        if rows is None:
            return None
        rows = min(rows, source.max_rows) if source.max_rows else rows
        total += rows * (source.weight or 1.0)
    return int(total)


def _steps(recipe: Recipe, rows: int | None) -> tuple[int | None, int]:
    """(optimizer steps or None when the rows are unknown, examples per step) of a `train:` section."""
    train = recipe.train
    per_step = train.get("per_device_train_batch_size", 8) * train.get("gradient_accumulation_steps", 1)
    if train.get("max_steps", -1) > 0:
        return train["max_steps"], per_step
    if rows is None:
        return None, per_step
    return math.ceil(train.get("num_train_epochs", 3) * math.ceil(rows / per_step)), per_step


def training_work(recipe: Recipe) -> Work | None:
    """sft, reward, dpo, orpo, kto: every optimizer step's examples, then the held-out set once."""
    rows = data_rows(recipe.data.train)
    fraction = recipe.data.eval_fraction or 0.0
    held_out = data_rows(recipe.data.eval) if recipe.data.eval else (rows or 0) * fraction
    steps, per_step = _steps(recipe, None if rows is None else rows * (1 - fraction))
    if steps is None or held_out is None:
        return None
    trained, forward = PASSES[recipe.method]
    length = recipe.data.max_length
    examples = steps * per_step
    return Work(
        trained=examples * trained * length, forward=(examples * forward + held_out * (trained + forward)) * length
    )


def _fine_tuning(recipe: Recipe, examples: int) -> float:
    """Tokens trained by the SFT of rs, gatt and distill on `examples` kept rows."""
    steps, per_step = _steps(recipe, examples)
    return steps * per_step * recipe.data.max_length


def sampling_work(recipe: Recipe) -> Work | None:
    """rs, gatt, distill: generate, score with the reward run, fine-tune on what is kept (at most one per prompt)."""
    rows, length, method = data_rows(recipe.data.train), recipe.data.max_length, recipe.method
    if rows is None:
        return None
    s = getattr(recipe, method)
    batches = math.ceil(rows / s.batch_size)
    if method == "rs":
        one_round = Work(
            trained=_fine_tuning(recipe, rows),
            forward=rows * s.samples_per_prompt * length,
            decode_steps=batches * s.max_new_tokens,
        )
        return Work(*(value * s.iterations for value in (one_round.trained, one_round.forward, one_round.decode_steps)))
    if method == "gatt":  # one reply per user turn; the last turn's K replies sampled together
        turns = s.max_turns or 4  # the built-in dialogues have 4 user turns
        return Work(
            trained=_fine_tuning(recipe, rows),
            forward=rows * s.samples_per_dialogue * length,
            decode_steps=batches * turns * s.max_new_tokens,
        )
    # distill: every prompt answered twice, as it is and behind the preprompt
    return Work(
        trained=_fine_tuning(recipe, rows), forward=rows * 2 * length, decode_steps=2 * batches * s.max_new_tokens
    )


def online_work(recipe: Recipe) -> Work:
    """ppo, grpo: each step generates a batch of answers together, scores them and optimises on them."""
    length = recipe.data.max_length
    if recipe.method == "ppo":
        s = recipe.ppo
        passes = 2 + (s.ptx_coef > 0)  # policy and value, and the ptx answers
        return Work(
            trained=s.steps * s.ppo_epochs * s.batch_size * passes * length,
            forward=s.steps * s.batch_size * 4 * length,  # old policy, value, reference, reward
            decode_steps=s.steps * s.max_new_tokens,
        )
    train = recipe.train
    steps = train.get("max_steps", -1)
    answers = train.get("per_device_train_batch_size", 8) * train.get("gradient_accumulation_steps", 1)
    scorers = len([reward for reward in recipe.grpo.rewards if "run" in reward]) + (train.get("beta", 0.0) > 0)
    return Work(
        trained=steps * answers * length,
        forward=steps * answers * scorers * length,
        decode_steps=steps * train.get("max_completion_length", 256),
    )


def run_work(recipe: Recipe) -> Work | None:
    """The work of a recipe's run, or None when its length cannot be known offline (an epoch of an uncounted set)."""
    how = METHODS[recipe.method].plan
    if how == "training":
        return training_work(recipe)
    if how in ("rs", "generation"):
        return sampling_work(recipe)
    if recipe.method == "grpo" and recipe.train.get("max_steps", -1) <= 0:
        return None
    return online_work(recipe)


def duration(seconds: float) -> str:
    minutes = max(1, round(seconds / 60))
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def time_lines(recipe: Recipe, shape: ModelShape | None) -> list[str]:
    """`posttrain plan`'s time estimate: one line, then the assumption it rests on."""
    work = run_work(recipe)
    if work is None:
        return [
            "time        unknown offline: the training rows cannot be counted here; set train.max_steps "
            "(or a data source's max_rows) to get an estimate"
        ]
    counts = f"{work.trained / 1e6:.2g} M tokens trained, {work.forward / 1e6:.2g} M scored"
    if work.decode_steps:
        counts += f", {work.decode_steps:,.0f} generation steps"
    return [
        f"time        about {duration(work.seconds(shape))} on a T4, an estimate ({counts})",
        f"            {ASSUMPTION}",
    ]
