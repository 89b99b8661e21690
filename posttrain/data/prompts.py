"""Prompt-only sets (PPO, rejection sampling): any SFT or preference format, prompt part taken.

Each prompt is a message list ending in a user turn, with `safety` true when the row is tagged "safety"
(a `tags` list holding it, or a `category` of "safety"), for Llama 2's two-reward rule.
"""

from __future__ import annotations

from posttrain.data.formats import normalise
from posttrain.data.preferences import normalise_preferences
from posttrain.data.prepare import chat_length
from posttrain.data.sources import read_rows
from posttrain.errors import UserError


def is_safety(row: dict) -> bool:
    tags = row.get("tags") or []
    return "safety" in ([tags] if isinstance(tags, str) else tags) or row.get("category") == "safety"


def load_prompts(source: str, tokenizer, max_length: int) -> list[dict]:
    """[{"prompt": messages, "safety": bool}]; a prompt longer than max_length tokens is an error."""
    rows = read_rows(source)
    first = rows[0].data
    if {"chosen", "rejected"} <= set(first):
        _, examples = normalise_preferences(rows)
        prompts = [e["prompt"] for e in examples]
    elif isinstance(first.get("prompt"), str | list) and "completion" not in first:
        prompts = [
            [{"role": "user", "content": r.data["prompt"]}] if isinstance(r.data["prompt"], str) else r.data["prompt"]
            for r in rows
        ]
    else:
        _, examples = normalise(rows)
        if "text" in examples[0]:
            raise UserError(f"{source}: raw text rows have no prompt; give prompts, conversations or pairs.")
        prompts = [_up_to_last_user_turn(e["messages"]) for e in examples]
    lengths = [chat_length(tokenizer, p, add_generation_prompt=True) for p in prompts]
    too_long = [row.where for row, n in zip(rows, lengths, strict=True) if n > max_length]
    if too_long:
        raise UserError(
            f"{len(too_long)} of {len(rows)} prompts are longer than data.max_length={max_length} "
            f"tokens (first at {too_long[0]}). Raise data.max_length or shorten them."
        )
    return [{"prompt": p, "safety": is_safety(r.data)} for p, r in zip(prompts, rows, strict=True)]


def _up_to_last_user_turn(messages: list[dict]) -> list[dict]:
    last_user = max(i for i, m in enumerate(messages) if m["role"] == "user")
    return messages[: last_user + 1]
