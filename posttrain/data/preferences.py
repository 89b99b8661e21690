"""Preference data (reward, DPO, ORPO): every format becomes TRL's conversational preference row,
{"prompt": [messages], "chosen": [assistant message], "rejected": [assistant message]}, plus an optional
"margin" (from a margin column or a Llama 2 preference-strength label) and "strength"."""

from __future__ import annotations

import re

from posttrain.data.formats import SHAREGPT_ROLES, RowError, check_messages
from posttrain.data.sources import Row
from posttrain.errors import UserError

# Llama 2 (Touvron et al. 2023, table 28): margins per preference-strength label, "small" and "large" sets.
STRENGTH_MARGINS = {
    "small": {
        "significantly better": 1.0,
        "better": 2 / 3,
        "slightly better": 1 / 3,
        "negligibly better or unsure": 0.0,
    },
    "large": {"significantly better": 3.0, "better": 2.0, "slightly better": 1.0, "negligibly better or unsure": 0.0},
}
HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _as_reply(value, key: str) -> list[dict]:
    """A response given as text, one assistant message, or a list ending in one."""
    if isinstance(value, str) and value.strip():
        return [{"role": "assistant", "content": value}]
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        messages = check_messages(value)
        if messages[-1]["role"] == "assistant":
            return messages
    raise RowError(f"expected {key!r} as text or assistant message(s), found {value!r:.80}")


def from_explicit(row: dict) -> dict:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if _is_conversation(chosen) and _is_conversation(rejected):
        return from_implicit(row)  # processed UltraFeedback: the prompt repeated at the start of each side
    prompt = row.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        prompt = [{"role": "user", "content": prompt}]
    elif not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt)):
        raise RowError(f"expected 'prompt' as text or a list of messages, found {prompt!r:.80}")
    return {
        "prompt": prompt,
        "chosen": _as_reply(row.get("chosen"), "chosen"),
        "rejected": _as_reply(row.get("rejected"), "rejected"),
    }


def _is_conversation(value) -> bool:
    """A full conversation (it opens with a user or system turn), as opposed to a bare reply."""
    return (
        isinstance(value, list)
        and len(value) > 1
        and isinstance(value[0], dict)
        and value[0].get("role") != "assistant"
    )


def split_shared_prefix(chosen: list[dict], rejected: list[dict]) -> dict:
    """Implicit prompt: the messages both conversations share, then each one's different ending."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise RowError("chosen and rejected share no prompt: an implicit-prompt row needs the same opening turns")
    if chosen[shared]["role"] != "assistant" or rejected[shared]["role"] != "assistant":
        raise RowError("after the shared prompt, chosen and rejected must each continue with an assistant turn")
    return {"prompt": chosen[:shared], "chosen": chosen[shared:], "rejected": rejected[shared:]}


def from_implicit(row: dict) -> dict:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not (isinstance(chosen, list) and isinstance(rejected, list)):
        raise RowError("expected 'chosen' and 'rejected' as full conversations (lists of messages)")
    return split_shared_prefix(check_messages(chosen), check_messages(rejected))


def parse_hh(text: str) -> list[dict]:
    """Anthropic HH's "\\n\\nHuman: ...\\n\\nAssistant: ..." transcript as messages."""
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise RowError(f"expected an Anthropic HH transcript starting with '\\n\\nHuman: ', found {text[:60]!r}")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [
        {"role": roles[speaker], "content": said.strip()}
        for speaker, said in zip(parts[1::2], parts[2::2], strict=True)
    ]


def from_hh(row: dict) -> dict:
    chosen, rejected = row.get("chosen"), row.get("rejected")
    if not (isinstance(chosen, str) and isinstance(rejected, str)):
        raise RowError("expected 'chosen' and 'rejected' as HH transcript strings")
    return split_shared_prefix(parse_hh(chosen), parse_hh(rejected))


def from_sharegpt_preference(row: dict) -> dict:
    turns = row.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise RowError("expected 'conversations': a list of {from, value} turns")
    prompt = []
    for turn in turns:
        role = SHAREGPT_ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
        if role is None or not isinstance(turn.get("value"), str):
            raise RowError(f"expected turns with from (human/gpt/system) and value text, found {turn!r:.80}")
        prompt.append({"role": role, "content": turn["value"]})

    def reply(key: str) -> list[dict]:
        value = row.get(key)
        if isinstance(value, dict) and isinstance(value.get("value"), str):
            return [{"role": "assistant", "content": value["value"]}]
        raise RowError(f"expected {key!r} as a {{from, value}} message, found {value!r:.80}")

    return {"prompt": prompt, "chosen": reply("chosen"), "rejected": reply("rejected")}


# name -> (what a row must hold, normaliser); detect_preference_format picks one from the first row.
PREFERENCE_FORMATS = {
    "sharegpt_preference": ("conversations + chosen/rejected {from, value}", from_sharegpt_preference),
    "preference": ("prompt, chosen, rejected (text or messages)", from_explicit),
    "hh": ("chosen/rejected HH transcripts ('\\n\\nHuman: ...\\n\\nAssistant: ...')", from_hh),
    "implicit_preference": ("chosen/rejected full conversations sharing a prompt", from_implicit),
}


def detect_preference_format(row: Row) -> str:
    keys = set(row.data)
    if {"conversations", "chosen", "rejected"} <= keys:
        return "sharegpt_preference"
    if {"prompt", "chosen", "rejected"} <= keys:
        return "preference"
    if {"chosen", "rejected"} <= keys:
        chosen = row.data["chosen"]
        return "hh" if isinstance(chosen, str) and "\n\nHuman: " in chosen else "implicit_preference"
    expected = " | ".join(shape for shape, _ in PREFERENCE_FORMATS.values())
    missing = sorted({"chosen", "rejected"} - keys)
    raise UserError(
        f"{row.where} is not a preference row: missing {', '.join(missing)} (found keys {sorted(keys)}); "
        f"expected one of: {expected}."
    )


def margin_of(row: dict, margins: dict[str, float] | None) -> float | None:
    """The row's margin: its margin column, else its strength label mapped through `margins`."""
    if row.get("margin") is not None:
        try:
            return float(row["margin"])
        except (TypeError, ValueError):
            raise RowError(f"expected a number in 'margin', found {row['margin']!r}") from None
    label = row.get("strength")
    if label is None or margins is None:
        return None
    if label not in margins:
        raise RowError(f"unknown preference-strength label {label!r}; expected one of: {', '.join(margins)}")
    return margins[label]


def normalise_preferences(rows: list[Row], fmt: str = "auto", margins: dict[str, float] | None = None):
    """(format, rows as TRL conversational preference rows with optional margin/strength)."""
    if fmt == "auto":
        fmt = detect_preference_format(rows[0])
    if fmt not in PREFERENCE_FORMATS:
        raise UserError(f"data.format {fmt!r} is not a preference format: auto, {', '.join(PREFERENCE_FORMATS)}.")
    shape, convert = PREFERENCE_FORMATS[fmt]
    examples = []
    for row in rows:
        try:
            example = convert(row.data)
            margin = margin_of(row.data, margins)
        except RowError as err:
            raise UserError(f"{row.where} does not fit the {fmt} format ({shape}): {err}.") from None
        if margin is not None:
            example["margin"] = margin
        if row.data.get("strength") is not None:
            example["strength"] = row.data["strength"]
        examples.append(example)
    if any("margin" in e for e in examples) and not all("margin" in e for e in examples):
        where = next(row.where for row, e in zip(rows, examples, strict=True) if "margin" not in e)
        raise UserError(f"{where} has no margin or strength label while other rows do; give every row one, or none.")
    return fmt, examples


def identical_pairs(rows: list[Row], examples: list[dict]) -> list[Row]:
    return [row for row, e in zip(rows, examples, strict=True) if e["chosen"] == e["rejected"]]
