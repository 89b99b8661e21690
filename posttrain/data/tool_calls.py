"""Tool calls as data: the tools a row offers, the calls an assistant turn makes, and the text they are written as.

Both shapes users bring (ShareGPT `function_call`/`observation` turns, OpenAI-style `tool_calls` and `role: tool`)
become the form transformers' chat templates take: assistant messages may carry
`tool_calls: [{"type": "function", "function": {"name", "arguments": dict}}]`, a tool's result is
`{"role": "tool", "content": text}`, and the row holds `tools`: [{"type": "function", "function": schema}].
The shipped chat templates write a call as `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`;
`parse_reply` reads a generated reply back in the same form.
"""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

from posttrain.errors import UserError

CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


class ToolError(ValueError):
    """Tools or a call that do not fit the expected shape; the message says what was found."""


def tool_schemas(value) -> list[dict]:
    """A row's tools (a list, or a JSON string of one) as [{"type": "function", "function": {name, ...}}]; a bare
    function schema ({name, description, parameters}) is wrapped."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ToolError(f"'tools' is text but not JSON ({err.msg})") from None
    if not isinstance(value, list):
        raise ToolError(f"expected 'tools' as a list of function schemas, found {value!r:.80}")
    schemas = []
    for i, tool in enumerate(value, start=1):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ToolError(f"tool {i}: expected a function schema with a name, found {tool!r:.80}")
        schemas.append({"type": "function", "function": function})
    return schemas


def read_tools(path: Path) -> list[dict]:
    """The tools of a JSON file (`posttrain chat --tools`); an unreadable one is a UserError."""
    try:
        return tool_schemas(json.loads(path.read_text(encoding="utf-8")))
    except OSError as err:
        raise UserError(f"--tools {path}: cannot read it ({err.strerror}).") from None
    except (json.JSONDecodeError, ToolError) as err:
        raise UserError(f"--tools {path}: expected a JSON list of function schemas ({err}).") from None


def arguments_of(value, name: str) -> dict:
    """A call's arguments: a dict, or a JSON string holding one (OpenAI writes them as text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as err:
            raise ToolError(f"call of {name}: arguments are text but not JSON ({err.msg})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ToolError(f"call of {name}: expected arguments as an object, found {value!r:.80}")
    return value


def tool_call(call) -> dict:
    """One call, given as {"name", "arguments"} or {"type": "function", "function": {...}}, in the template's form."""
    function = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise ToolError(f"expected a call with a function name, found {call!r:.80}")
    name = function["name"]
    return {"type": "function", "function": {"name": name, "arguments": arguments_of(function.get("arguments"), name)}}


def tool_calls(value) -> list[dict]:
    """An assistant turn's calls: a list of calls, one call, or a JSON string of either (ShareGPT function_call)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise ToolError(f"the call is text but not JSON ({err.msg}): {value!r:.80}") from None
    calls = value if isinstance(value, list) else [value]
    if not calls:
        raise ToolError("expected at least one call")
    return [tool_call(call) for call in calls]


def tool_result(content) -> str:
    """A tool's result as text (a JSON value is written as JSON)."""
    return content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)


def call_text(call: dict) -> str:
    """A call as the shipped chat templates write it (their `tojson` is json.dumps with these settings)."""
    function = call["function"]
    body = json.dumps({"name": function["name"], "arguments": function["arguments"]}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def parse_reply(text: str) -> tuple[str, list[dict]]:
    """(the reply's text outside its calls, its calls): each `<tool_call>{json}</tool_call>` that parses as a call
    with a name; a block that does not parse stays in the text."""
    calls, kept, start = [], [], 0
    for match in CALL.finditer(text):
        try:
            call = tool_call(json.loads(match.group(1)))
        except (json.JSONDecodeError, ToolError):
            continue
        calls.append(call)
        kept.append(text[start : match.start()])
        start = match.end()
    kept.append(text[start:])
    return "".join(kept).strip(), calls


def shown(call: dict) -> str:
    """A call as chat and generate print it: get_weather({"city": "Paris"})."""
    function = call["function"]
    return f"{function['name']}({json.dumps(function['arguments'], ensure_ascii=False)})"


def fits_schema(call: dict, tools: list[dict]) -> bool:
    """The call names one of the tools, gives every argument its schema requires, and none it does not declare."""
    schemas = {tool["function"]["name"]: tool["function"].get("parameters") or {} for tool in tools}
    function = call["function"]
    if function["name"] not in schemas:
        return False
    parameters, arguments = schemas[function["name"]], set(function["arguments"])
    declared = set(parameters.get("properties") or {})
    return set(parameters.get("required") or []) <= arguments and (not declared or arguments <= declared)


def turn_lines(examples: list[dict]) -> list[str]:
    """What `data inspect` says of conversations: turns by role (with the assistant's calls), and the tools each
    row offers when any row offers some."""
    messages = [m for e in examples for m in e["messages"]]
    roles = {role: sum(m["role"] == role for m in messages) for role in ("system", "user", "assistant", "tool")}
    calling = [m for m in messages if m.get("tool_calls")]
    said = ", ".join(f"{role} {count}" for role, count in roles.items() if count)
    if calling:
        calls = sum(len(m["tool_calls"]) for m in calling)
        said += f"; {len(calling)} assistant turns call tools ({calls} calls)"
    lines = [f"turns by role: {said}"]
    offered = [len(e.get("tools") or []) for e in examples]
    if any(offered):
        spread = f"min {min(offered)}, median {int(statistics.median(offered))}, max {max(offered)}"
        names = sorted({t["function"]["name"] for e in examples for t in e.get("tools") or []})
        lines.append(f"tools per row: {spread} ({len(names)} distinct: {', '.join(names)})")
    return lines


def has_tools(examples: list[dict]) -> bool:
    return any("tools" in e or any("tool_calls" in m or m["role"] == "tool" for m in e["messages"]) for e in examples)


def dataset_of(rows: list[dict]):
    """A datasets.Dataset of training rows. Rows with tools keep each message and tool schema as JSON, so Arrow
    does not merge every call's arguments into one struct (which would fill each call with the others' keys)."""
    from datasets import Dataset, Features, Json, List

    if not rows or "messages" not in rows[0] or not has_tools(rows):
        return Dataset.from_list(rows)
    rows = [row | {"tools": row.get("tools")} for row in rows]
    features = {key: Json() for key in rows[0]} | {"messages": List(Json())}
    return Dataset.from_list(rows, features=Features(features))
