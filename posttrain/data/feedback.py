"""Unpaired feedback (KTO): single answers marked good or bad, e.g. thumbs-up/down logs. Every format becomes TRL's
conversational unpaired row, {"prompt": [messages], "completion": [assistant message], "label": bool}.

Rows with a boolean `label`: prompt/completion (text or messages), or a conversation in `messages` whose last
assistant turn is the completion. Preference pairs are accepted too: each pair becomes one desirable row (chosen)
and one undesirable row (rejected), as TRL's unpair_preference_dataset does.
"""

from __future__ import annotations

from posttrain.data.formats import RowError, check_messages
from posttrain.data.preferences import PREFERENCE_FORMATS, normalise_preferences
from posttrain.data.sources import Row
from posttrain.errors import UserError

LABELS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
# KTO paper (Ethayarajh et al. 2024, eq. 8): keep desirable_weight * desirable / (undesirable_weight * undesirable)
# between 1 and 4/3.
BALANCE = (1.0, 4 / 3)


def label_of(row: dict) -> bool:
    """The row's label: true/false (or 1/0, "yes"/"no" as CSV files write them)."""
    value = row.get("label")
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float | str) and str(value).strip().lower() in LABELS:
        return LABELS[str(value).strip().lower()]
    raise RowError(f"expected 'label' true (desirable) or false (undesirable), found {value!r:.40}")


def from_prompt_completion(row: dict) -> dict:
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, str) and prompt.strip():
        prompt = [{"role": "user", "content": prompt}]
    if isinstance(completion, str) and completion.strip():
        completion = [{"role": "assistant", "content": completion}]
    if not (isinstance(prompt, list) and prompt and isinstance(completion, list) and completion):
        raise RowError("expected 'prompt' and 'completion' as text or lists of messages")
    messages = check_messages(prompt + completion)
    if messages[-1]["role"] != "assistant":
        raise RowError("the completion must end with an assistant turn")
    return {"prompt": messages[: len(prompt)], "completion": messages[len(prompt) :], "label": label_of(row)}


def from_messages(row: dict) -> dict:
    messages = check_messages(row.get("messages"))
    if messages[-1]["role"] != "assistant" or len(messages) < 2:
        raise RowError("expected a conversation ending in the assistant turn that the label judges")
    return {"prompt": messages[:-1], "completion": messages[-1:], "label": label_of(row)}


# name -> (what a row must hold, normaliser); pairs are unpaired by normalise_feedback.
FEEDBACK_FORMATS = {
    "feedback": ("prompt, completion, label (text or messages)", from_prompt_completion),
    "messages_feedback": ("messages, label (the last assistant turn is judged)", from_messages),
}


def is_feedback(rows: list[Row]) -> bool:
    return "label" in rows[0].data


def detect_feedback_format(row: Row) -> str:
    keys = set(row.data)
    if {"prompt", "completion", "label"} <= keys:
        return "feedback"
    if {"messages", "label"} <= keys:
        return "messages_feedback"
    if {"chosen", "rejected"} <= keys:
        return "pairs"
    expected = " | ".join(shape for shape, _ in FEEDBACK_FORMATS.values())
    raise UserError(
        f"{row.where} is not unpaired feedback: found keys {sorted(keys)}; expected one of: {expected}, or "
        "preference pairs (chosen, rejected)."
    )


def normalise_feedback(rows: list[Row], fmt: str = "auto") -> tuple[str, list[Row], list[dict]]:
    """(format, the row each example came from, examples as TRL unpaired rows). A pair gives two examples."""
    fmt = fmt.removesuffix(" (unpaired)")  # the eval set is read in the train set's format
    if fmt == "auto":
        fmt = detect_feedback_format(rows[0])
    if fmt == "pairs" or fmt in PREFERENCE_FORMATS:
        pair_format, pairs = normalise_preferences(rows, "auto" if fmt == "pairs" else fmt)
        unpaired = [
            {"prompt": pair["prompt"], "completion": pair[side], "label": side == "chosen"}
            for pair in pairs
            for side in ("chosen", "rejected")
        ]
        return f"{pair_format} (unpaired)", [row for row in rows for _ in range(2)], unpaired
    if fmt not in FEEDBACK_FORMATS:
        known = ", ".join([*FEEDBACK_FORMATS, "pairs", *PREFERENCE_FORMATS])
        raise UserError(f"data.format {fmt!r} is not an unpaired-feedback format: auto, {known}.")
    shape, convert = FEEDBACK_FORMATS[fmt]
    examples = []
    for row in rows:
        try:
            examples.append(convert(row.data))
        except RowError as err:
            raise UserError(f"{row.where} does not fit the {fmt} format ({shape}): {err}.") from None
    return fmt, rows, examples


# ---------------------------------------------------------------- desirable / undesirable balance


def counts(examples: list[dict]) -> tuple[int, int]:
    desirable = sum(bool(e["label"]) for e in examples)
    return desirable, len(examples) - desirable


def balance_lines(examples: list[dict], desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> list[str]:
    """The desirable/undesirable counts, their weighted ratio, and the KTO weight that brings it within 1 to 4/3."""
    desirable, undesirable = counts(examples)
    lines = [f"labels      {desirable} desirable, {undesirable} undesirable"]
    if not desirable or not undesirable:
        missing = "undesirable" if desirable else "desirable"
        return lines + [f"            no {missing} rows: KTO learns from both kinds; add some"]
    ratio = desirable_weight * desirable / (undesirable_weight * undesirable)
    line = f"            weighted ratio {ratio:.2f}"
    if (desirable_weight, undesirable_weight) != (1, 1):
        line += f" with desirable_weight {desirable_weight:g}, undesirable_weight {undesirable_weight:g}"
    low, high = BALANCE
    if ratio < low:
        fix = f"train.desirable_weight={undesirable_weight * undesirable / desirable:.2f}"
        return lines + [f"{line}: below 1 (KTO paper: 1 to 4/3); set {fix}"]
    if ratio > high:
        fix = f"train.undesirable_weight={desirable_weight * desirable / undesirable:.2f}"
        return lines + [f"{line}: above 4/3 (KTO paper: 1 to 4/3); set {fix}"]
    return lines + [f"{line} (within the KTO paper's 1 to 4/3)"]
