"""Multi-turn user prompts (Ghost Attention, `eval gatt`): the user turns of each row in order, from any format a
prompt set may take (messages, ShareGPT conversations, a prompt list, or a messages list of user turns only).
Single prompts can be chained into dialogues of a given number of turns."""

from __future__ import annotations

from posttrain.data.formats import RowError
from posttrain.data.prompts import problem_report, prompt_of
from posttrain.data.sources import read_rows
from posttrain.errors import UserError


def read_user_turns(source: str) -> list[list[str]]:
    """Every row's user turns in order; a row with none, or unreadable, is reported by its place (UserError)."""
    rows = read_rows(source)
    dialogues, problems = [], []
    for row in rows:
        try:
            turns = [m["content"].strip() for m in prompt_of(row) if m["role"] == "user"]
        except RowError as err:
            problems.append(f"{row.where}: {err}")
            continue
        if any(not turn for turn in turns):
            problems.append(f"{row.where}: a user turn is empty")
            continue
        dialogues.append(turns)
    if problems:
        raise UserError(problem_report(source, len(rows), problems, usable=len(dialogues)))
    return dialogues


def chain(dialogues: list[list[str]], turns: int) -> list[list[str]]:
    """Consecutive single prompts joined into dialogues of `turns` user turns (a shorter last one if it has at
    least two); dialogues that already have several turns are kept as they are."""
    multi = [d for d in dialogues if len(d) > 1]
    singles = [d[0] for d in dialogues if len(d) == 1]
    chained = [singles[i : i + turns] for i in range(0, len(singles), turns)]
    return multi + [d for d in chained if len(d) > 1]


def multi_turn(dialogues: list[list[str]], source: str, key: str) -> list[list[str]]:
    """The dialogues with at least two user turns; none: a UserError that says how to chain single prompts."""
    kept = [d for d in dialogues if len(d) > 1]
    if not kept:
        raise UserError(
            f"{source}: every row has a single user turn, and a dialogue needs at least two. Give multi-turn "
            f"prompts (e.g. builtin:gatt_dialogues), or chain single prompts into dialogues with {key}: 3."
        )
    return kept
