"""SFT data formats: detect which one a dataset uses and turn every row into `messages` (or raw `text`).

Conversational rows become role/content message lists so the chat template and assistant-only loss apply
uniformly; raw `text` stays text (continued pretraining).
"""

from __future__ import annotations

from collections.abc import Callable

from posttrain.data.sources import Row
from posttrain.data.tool_calls import ToolError, tool_calls, tool_result, tool_schemas
from posttrain.errors import UserError

SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
}
ROLES = ("system", "user", "assistant")
SHAREGPT_TOOL_ROLES = ("function_call", "observation")  # an assistant's call, a tool's result (LLaMA-Factory)


class RowError(Exception):
    """A row that does not fit its format; the message says what was expected and found."""


def _text(row: dict, key: str) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        found = "nothing" if value is None else repr(value)[:60]
        raise RowError(f"expected text in {key!r}, found {found}")
    return value


def check_message(message, i: int) -> dict:
    """One message in the canonical form: role and content text, an assistant's calls, a tool's result."""
    role = message.get("role") if isinstance(message, dict) else None
    try:
        if role == "tool":
            return {"role": "tool", "content": tool_result(message.get("content"))}
        if role == "assistant" and message.get("tool_calls"):
            content = message.get("content") or ""
            if isinstance(content, str):
                return {"role": role, "content": content, "tool_calls": tool_calls(message["tool_calls"])}
    except ToolError as err:
        raise RowError(f"message {i}: {err}") from None
    if role not in ROLES or not isinstance(message.get("content"), str):
        raise RowError(
            f"message {i}: expected role (system/user/assistant/tool) and content text, found {message!r:.80}"
        )
    return {"role": role, "content": message["content"]}


def check_messages(messages) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise RowError("expected a non-empty list of {role, content} messages")
    clean = [check_message(message, i) for i, message in enumerate(messages, start=1)]
    if not any(m["role"] == "assistant" for m in clean):
        raise RowError("the conversation has no assistant turn to learn from")
    return clean


def with_tools(row: dict, messages: list[dict]) -> dict:
    """The canonical row: its messages, and its tools when it offers any."""
    if not row.get("tools"):
        return {"messages": messages}
    try:
        return {"messages": messages, "tools": tool_schemas(row["tools"])}
    except ToolError as err:
        raise RowError(str(err)) from None


def from_messages(row: dict) -> dict:
    return with_tools(row, check_messages(row.get("messages")))


def sharegpt_message(turn, i: int, messages: list[dict]) -> dict | None:
    """A ShareGPT turn as a message; None for a function_call that joins the assistant turn just before it."""
    source = turn.get("from") if isinstance(turn, dict) else None
    if source in SHAREGPT_TOOL_ROLES and isinstance(turn.get("value"), str):
        if source == "observation":
            return {"role": "tool", "content": turn["value"]}
        try:
            calls = tool_calls(turn["value"])
        except ToolError as err:
            raise RowError(f"turn {i}: {err}") from None
        if messages and messages[-1]["role"] == "assistant":  # a call after the assistant's words: one turn
            messages[-1]["tool_calls"] = messages[-1].get("tool_calls", []) + calls
            return None
        return {"role": "assistant", "content": "", "tool_calls": calls}
    role = SHAREGPT_ROLES.get(source)
    if role is None or not isinstance(turn.get("value"), str):
        raise RowError(
            f"turn {i}: expected from (human/gpt/system/function_call/observation) and value text, found {turn!r:.80}"
        )
    return {"role": role, "content": turn["value"]}


def from_sharegpt(row: dict) -> dict:
    turns = row.get("conversations")
    if not isinstance(turns, list):
        raise RowError("expected 'conversations': a list of {from, value} turns")
    messages = []
    for i, turn in enumerate(turns, start=1):
        message = sharegpt_message(turn, i, messages)
        if message is not None:
            messages.append(message)
    return with_tools(row, check_messages(messages))


def from_alpaca(row: dict) -> dict:
    messages = []
    if row.get("system"):
        messages.append({"role": "system", "content": _text(row, "system")})
    for pair in row.get("history") or []:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RowError(f"history: expected [instruction, output] pairs, found {pair!r:.80}")
        messages += [
            {"role": "user", "content": str(pair[0])},
            {"role": "assistant", "content": str(pair[1])},
        ]
    instruction = _text(row, "instruction")
    extra = row.get("input")
    user = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, "output")}]
    return {"messages": check_messages(messages)}


def from_prompt_completion(row: dict) -> dict:
    prompt, completion = row.get("prompt"), row.get("completion")
    if isinstance(prompt, list) and isinstance(completion, list):  # conversational prompt/completion
        return {"messages": check_messages(prompt + completion)}
    return {
        "messages": check_messages(
            [
                {"role": "user", "content": _text(row, "prompt")},
                {"role": "assistant", "content": _text(row, "completion")},
            ]
        )
    }


def from_text(row: dict) -> dict:
    return {"text": _text(row, "text")}


# name -> (keys that identify it, what a row must hold, normaliser); detection tries them in this order.
SFT_FORMATS: dict[str, tuple[tuple[str, ...], str, Callable[[dict], dict]]] = {
    "messages": (("messages",), "messages: [{role, content}, ...]", from_messages),
    "sharegpt": (("conversations",), "conversations: [{from, value}, ...] (ShareGPT)", from_sharegpt),
    "alpaca": (("instruction",), "instruction, input, output (Alpaca)", from_alpaca),
    "prompt_completion": (("prompt", "completion"), "prompt, completion", from_prompt_completion),
    "text": (("text",), "text (raw text for continued pretraining)", from_text),
}


def detect_format(row: Row) -> str:
    for name, (keys, _, _) in SFT_FORMATS.items():
        if all(key in row.data for key in keys):
            return name
    expected = " | ".join(shape for _, shape, _ in SFT_FORMATS.values())
    raise UserError(f"{row.where} fits no known format: found keys {sorted(row.data)}; expected one of: {expected}.")


def normalise(rows: list[Row], fmt: str = "auto") -> tuple[str, list[dict]]:
    """(format name, rows in canonical form). A row that does not fit is reported with its place."""
    if fmt == "auto":
        fmt = detect_format(rows[0])
    if fmt not in SFT_FORMATS:
        raise UserError(f"data.format {fmt!r} is not an SFT format: auto, {', '.join(SFT_FORMATS)}.")
    _, shape, convert = SFT_FORMATS[fmt]
    out = []
    for row in rows:
        try:
            out.append(convert(row.data))
        except RowError as err:
            raise UserError(f"{row.where} does not fit the {fmt} format ({shape}): {err}.") from None
    return fmt, out
