"""A notebook's estimated time on a free Colab T4: its commands' estimates by posttrain.plan.timing, added up.

Each notebook of stages.py lists what takes time in it (`timed`), as tuples:
    ("run", recipe, sets)                       a training command, estimated as `posttrain plan` estimates it
    ("generate", what, commands, answers, tokens)   commands that load a model and answer `answers` prompts each
    ("load", what, loads)                       commands that mostly load models (merge, a chat)
"""

from __future__ import annotations

import math

from posttrain.plan.timing import ASSUMPTION, LOAD_S, Work, duration, run_work
from posttrain.recipe import load_recipe

DOWNLOAD_S = 180  # a session's first download of Llama 2 7B (13.5 GB), assumed at about 75 MB/s
GENERATE_BATCH = 8  # posttrain generate's and eval's default --batch-size


def part_seconds(part: tuple) -> tuple[str, float]:
    """(what, seconds) of one entry of a notebook's `timed` list."""
    kind, what, *rest = part
    if kind == "run":
        recipe = load_recipe(what, rest[0])
        work = run_work(recipe)
        if work is None:
            raise ValueError(f"{what}: the notebook's --set must make its length countable (train.max_steps)")
        return f"`posttrain {recipe.method}`", work.seconds()
    if kind == "generate":
        commands, answers, tokens = rest
        steps = commands * math.ceil(answers / GENERATE_BATCH) * tokens
        return what, Work(decode_steps=steps, loads=commands).seconds()
    return what, rest[0] * LOAD_S


def notebook_seconds(timed: list[tuple]) -> tuple[float, list[tuple[str, float]]]:
    """The notebook's total, and each part's, the first download of the model included."""
    parts = [part_seconds(part) for part in timed] + [("the first download of the 7B model", DOWNLOAD_S)]
    return sum(seconds for _, seconds in parts), parts


def time_paragraph(timed: list[tuple]) -> str:
    """The opening cell's paragraph on how long the notebook takes on a T4."""
    total, parts = notebook_seconds(timed)
    listed = ", ".join(f"{what} {duration(seconds)}" for what, seconds in parts)
    return (
        f"**Estimated time on a free Colab T4: about {duration(total)}** top to bottom ({listed}). An estimate, not a "
        "measurement: no GPU has run this notebook yet. Each training run is timed as `posttrain plan` times it, "
        f"from the tokens it trains, scores and generates, over {ASSUMPTION}; the download is assumed at 75 MB/s."
    )


def notebook_times() -> dict[str, str]:
    """{notebook: its estimated T4 time}, as README.md's table of notebooks gives it."""
    from stages import NOTEBOOKS

    return {name: duration(notebook_seconds(parts["timed"])[0]) for name, parts in NOTEBOOKS.items()}
