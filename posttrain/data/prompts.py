"""Prompt-only sets (PPO, rejection sampling, generate, win-rate): any SFT or preference format, prompt part taken.

Each prompt is a message list ending in a user turn, with `safety` true when the row is tagged "safety"
(a `tags` list holding it, or a `category` of "safety"), for Llama 2's two-reward rule. A row with no usable
prompt is reported by its place and what was wrong with it.
"""

from __future__ import annotations

from collections import Counter

from posttrain.data.formats import SHAREGPT_ROLES, RowError, check_message
from posttrain.data.mixture import read_parts, weighted_order
from posttrain.data.preferences import PREFERENCE_FORMATS, detect_preference_format
from posttrain.data.prepare import chat_length
from posttrain.data.sources import Row
from posttrain.data.tool_calls import ToolError, tool_schemas
from posttrain.errors import UserError
from posttrain.sections import Sources, as_sources

EXPECTED = (
    "each row needs a prompt: prompt (text or messages), messages or conversations ending in a user turn, "
    "instruction (Alpaca), or a chosen/rejected pair"
)
SHOWN_PROBLEMS = 5
# Where a row's prompt comes from: not passed on as a column of its own (see read_prompts' `columns`).
CONVERSATION_KEYS = frozenset({"prompt", "messages", "conversations", "chosen", "rejected"})


def is_safety(row: dict) -> bool:
    tags = row.get("tags") or []
    return "safety" in ([tags] if isinstance(tags, str) else tags) or row.get("category") == "safety"


def load_prompts(
    source: Sources,
    tokenizer,
    max_length: int,
    limit: str | None = None,
    fix: str = "Raise data.max_length or shorten them.",
) -> list[dict]:
    """[{"prompt": messages, "safety": bool}] for every row; an unusable or too long row is a UserError.

    `limit` and `fix` word the too-long error for the caller's setting (default: data.max_length).
    """
    prompts, too_long = read_prompts(source, tokenizer, max_length)
    if too_long:
        raise UserError(too_long_message(list(too_long.values()), len(prompts), max_length, limit) + f" {fix}")
    return prompts


def too_long_message(too_long: list[str], total: int, max_length: int, limit: str | None = None) -> str:
    return (
        f"{len(too_long)} of {total} prompts are longer than {limit or f'data.max_length={max_length}'} "
        f"tokens (first at {too_long[0]})."
    )


def read_prompts(
    source: Sources, tokenizer, max_length: int, columns: bool = False
) -> tuple[list[dict], dict[int, str]]:
    """(every usable prompt, {index: file and row} of those longer than max_length); an unusable row is a
    UserError. `source` may be a mixture: each prompt records the source it came from. With `columns`, each prompt
    also carries its row's other columns (e.g. an answer to check)."""
    from jinja2 import TemplateError

    rows, origins = [], []
    for part in read_parts(source):
        order = weighted_order(len(part.rows), part.source.weight, seed=42)
        rows += [part.rows[i] for i in order]
        origins += [part.source.path] * len(order)
    prompts, problems, too_long = [], [], {}
    for row, origin in zip(rows, origins, strict=True):
        try:
            prompt = prompt_of(row)
            tools = tool_schemas(row.data["tools"]) if row.data.get("tools") else None
            length = chat_length(tokenizer, prompt, add_generation_prompt=True, tools=tools)
        except (RowError, ToolError) as err:
            problems.append(f"{row.where}: {err}")
        except TemplateError as err:
            problems.append(f"{row.where}: the chat template rejects this prompt ({err})")
        else:
            if length > max_length:
                too_long[len(prompts)] = row.where
            extra = {k: v for k, v in row.data.items() if k not in CONVERSATION_KEYS} if columns else {}
            offered = {"tools": tools} if tools else {}  # the tools the row offers, for the chat template
            prompts.append(extra | {"prompt": prompt, "safety": is_safety(row.data), "source": origin} | offered)
    if problems:
        where = ", ".join(s.path for s in as_sources(source))
        raise UserError(problem_report(where, len(rows), problems, usable=len(prompts)))
    return prompts, too_long


def prompt_sources(prompts: list[dict]) -> str:
    """Where prompts came from: one source, or each source of a mixture with its count."""
    counts = Counter(p["source"] for p in prompts)
    if len(counts) == 1:
        return next(iter(counts))
    return f"{len(counts)} sources: " + ", ".join(f"{path} ({n})" for path, n in counts.items())


def problem_report(source: str, total: int, problems: list[str], usable: int) -> str:
    head = (
        f"{source} has no usable prompts" if not usable else f"{len(problems)} of {total} rows of {source} are unusable"
    )
    shown = [f"  {p}" for p in problems[:SHOWN_PROBLEMS]]
    if len(problems) > SHOWN_PROBLEMS:
        shown.append(f"  ... and {len(problems) - SHOWN_PROBLEMS} more")
    return "\n".join([head + ":", *shown, "Fix or remove these rows."])


def prompt_of(row: Row) -> list[dict]:
    """The prompt part of a row in any data format posttrain reads, as messages ending in a user turn."""
    data = row.data
    if {"chosen", "rejected"} <= set(data):
        return _up_to_last_user_turn(PREFERENCE_FORMATS[detect_preference_format(row)][1](data)["prompt"])
    if "prompt" in data:
        prompt = data["prompt"]
        if isinstance(prompt, str):
            return _up_to_last_user_turn([{"role": "user", "content": prompt}])
        return _up_to_last_user_turn(_messages(prompt, "prompt"))
    if "messages" in data:
        return _up_to_last_user_turn(_messages(data["messages"], "messages"))
    if "conversations" in data:
        turns = data["conversations"]
        if not isinstance(turns, list):
            raise RowError("expected 'conversations' as a list of {from, value} turns")
        return _up_to_last_user_turn(_messages([_from_sharegpt(turn) for turn in turns], "conversations"))
    if "instruction" in data:
        return _alpaca_prompt(data)
    if "text" in data:
        raise RowError("raw text has no prompt; give prompts, conversations or pairs")
    raise RowError(f"found keys {sorted(data)}, but {EXPECTED}")


def _messages(value, key: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise RowError(f"expected {key!r} as text or a non-empty list of {{role, content}} messages")
    messages = []
    for i, message in enumerate(value, start=1):
        try:  # a conversation with tool calls keeps them, so a prompt may follow earlier calls
            messages.append(check_message(message, i))
        except RowError:
            raise RowError(f"{key} message {i}: expected role (system/user/assistant/tool) and content text") from None
    return messages


def _from_sharegpt(turn) -> dict:
    role = SHAREGPT_ROLES.get(turn.get("from")) if isinstance(turn, dict) else None
    if role is None or not isinstance(turn.get("value"), str):
        raise RowError(f"expected turns with from (human/gpt/system) and value text, found {turn!r:.80}")
    return {"role": role, "content": turn["value"]}


def _alpaca_prompt(data: dict) -> list[dict]:
    instruction, extra = data.get("instruction"), data.get("input")
    if not isinstance(instruction, str):
        raise RowError("expected text in 'instruction'")
    user = f"{instruction}\n\n{extra}" if isinstance(extra, str) and extra.strip() else instruction
    messages = [{"role": "system", "content": data["system"]}] if isinstance(data.get("system"), str) else []
    for pair in data.get("history") or []:
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise RowError(f"history: expected [instruction, output] pairs, found {pair!r:.80}")
        messages += [{"role": "user", "content": str(pair[0])}, {"role": "assistant", "content": str(pair[1])}]
    return _up_to_last_user_turn(messages + [{"role": "user", "content": user}])


def _up_to_last_user_turn(messages: list[dict]) -> list[dict]:
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if not users:
        raise RowError("the prompt has no user turn")
    prompt = messages[: users[-1] + 1]
    if not prompt[-1]["content"].strip():
        raise RowError("the last user turn is empty")
    return prompt
