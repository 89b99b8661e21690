"""Preference pairs keep their answers: a pair too long for max_length loses the start of its prompt first.

Whole earliest turns go first (a system message stays), so the prompt still opens with a user turn; if one user turn
is still too long, its text is cut from the left, keeping its end, the part the answers respond to. Only a pair
whose answers leave no room for any prompt is too long even so.
"""

from __future__ import annotations

from posttrain.data.lengths import chat_length


def pair_length(tokenizer, prompt: list[dict], example: dict) -> int:
    return max(chat_length(tokenizer, prompt + example[side]) for side in ("chosen", "rejected"))


def cut_prompt(tokenizer, example: dict, max_length: int) -> dict | None:
    """The pair with its prompt cut from the left to fit max_length tokens, or None when no prompt fits."""
    prompt = example["prompt"]
    system = prompt[:1] if prompt[0]["role"] == "system" else []
    turns = prompt[len(system) :]
    while pair_length(tokenizer, system + turns, example) > max_length:
        later_users = [i for i, m in enumerate(turns) if i > 0 and m["role"] == "user"]
        if not later_users:
            return _cut_first_turn(tokenizer, example, system, turns, max_length)
        turns = turns[later_users[0] :]
    return example | {"prompt": system + turns}


def _cut_first_turn(tokenizer, example: dict, system: list, turns: list, max_length: int) -> dict | None:
    """Keep the longest end of the first remaining turn's text that fits (bisection over its tokens)."""
    ids = tokenizer(turns[0]["content"], add_special_tokens=False)["input_ids"]

    def prompt_keeping(n: int) -> list[dict]:
        return system + [turns[0] | {"content": tokenizer.decode(ids[-n:]).lstrip()}] + turns[1:]

    low, high = 0, len(ids) - 1  # low: the most tokens known to fit (0: none)
    while low < high:
        middle = (low + high + 1) // 2
        if pair_length(tokenizer, prompt_keeping(middle), example) <= max_length:
            low = middle
        else:
            high = middle - 1
    if low == 0:
        return None
    return example | {"prompt": prompt_keeping(low)}
