"""`posttrain generate`: a reply to every prompt of a file, as JSONL rows {prompt, response, finished, model, settings}.

`finished` is false for a reply cut off at max_new_tokens (no EOS); rows written before it existed lack it. A prompt
row's `tools` go to the chat template, and a reply that calls tools also gets `tool_calls` (the calls as data).

Batched with left padding. Resumable: rows are appended batch by batch, and a rerun skips the prompts the output
already answers (a prompt listed twice in the file is answered twice). A row cut short by a crash is dropped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from posttrain.data.tool_calls import parse_reply
from posttrain.errors import UserError
from posttrain.inference.generation import GenerationSettings
from posttrain.runs import locks


def generate_file(
    model_name: str,
    prompts_file: str,
    output: Path,
    settings: GenerationSettings,
    *,
    batch_size: int = 8,
    seed: int = 0,
    chat_template: str = "auto",
    echo: Callable[[str], None] = print,
) -> int:
    """Answer the prompts `output` does not hold yet; returns how many were generated."""
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1.")
    output.parent.mkdir(parents=True, exist_ok=True)
    locks.acquire(locks.sibling_lock(output), f"--output {output}")  # one writer: released when this returns
    try:
        return generate_missing(model_name, prompts_file, output, settings, batch_size, seed, chat_template, echo)
    finally:
        locks.release(locks.sibling_lock(output))


def generate_missing(model_name, prompts_file, output: Path, settings, batch_size, seed, chat_template, echo) -> int:
    from transformers import set_seed

    from posttrain.data.prompts import load_prompts
    from posttrain.inference.generation import generate_replies_to_chats, progress_bar, room_for_replies
    from posttrain.models.loading import context_length, load_inference_tokenizer, load_run_model

    ref, tokenizer = load_inference_tokenizer(model_name, chat_template)
    limit = context_length(ref) - settings.max_new_tokens
    rows = load_prompts(prompts_file, tokenizer, limit, *room_for_replies(limit, settings))
    model_id = str(ref.adapter.parent) if ref.is_run else ref.name
    record = {"model": model_id, "settings": settings.as_record() | ({"seed": seed} if settings.do_sample else {})}
    pending = not_yet_answered(rows, read_answered(output, record))
    echo(f"{prompts_file}: {len(rows)} prompts, {len(rows) - len(pending)} already in {output}, {len(pending)} to go")
    if not pending:
        return 0
    model, tokenizer = load_run_model(model_name, chat_template=chat_template)
    set_seed(seed)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("a", encoding="utf-8") as handle, progress_bar(len(pending)) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            chats, tools = [row["prompt"] for row in batch], [row.get("tools") for row in batch]
            replies = generate_replies_to_chats(model, tokenizer, chats, settings, tools)
            for prompt, reply in zip(chats, replies, strict=True):
                handle.write(json.dumps(answer_row(prompt, reply) | record, ensure_ascii=False) + "\n")
            handle.flush()  # a crash loses at most the batch being generated
            bar.update(len(batch))
    return len(pending)


def answer_row(prompt: list[dict], reply) -> dict:
    """The row written for one reply: a reply that calls tools also lists its calls."""
    row = {"prompt": prompt, "response": reply.text, "finished": reply.finished}
    calls = parse_reply(reply.text)[1]
    return row | ({"tool_calls": calls} if calls else {})


def prompt_key(prompt: list[dict]) -> str:
    return json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def read_answered(output: Path, record: dict) -> Counter:
    """How often each prompt is already answered in `output`, written by the same model with the same settings."""
    if output.is_dir():
        raise UserError(f"--output {output} is a folder; give a .jsonl file.")
    if not output.exists():
        return Counter()
    text = output.read_text(encoding="utf-8")
    lines = text.splitlines()
    if lines and not text.endswith("\n"):  # the last row was cut short by a crash: drop it, it is regenerated
        lines.pop()
        output.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    answered: Counter = Counter()
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
            key = prompt_key(row["prompt"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(
                f"{output} line {number} is not a row of `posttrain generate` (JSON with prompt and response). "
                "Choose another --output."
            ) from None
        for name in ("model", "settings"):
            if row.get(name) != record[name]:
                raise UserError(
                    f"{output} line {number} was generated with {name} {row.get(name)}, not {record[name]}. "
                    "Resume with the same model and settings, or choose another --output."
                )
        answered[key] += 1
    return answered


def not_yet_answered(rows: list[dict], answered: Counter) -> list[dict]:
    """The prompt rows `answered` does not hold yet (a prompt answered n times covers its first n rows)."""
    answered = answered.copy()
    pending = []
    for row in rows:
        key = prompt_key(row["prompt"])
        if answered[key]:
            answered[key] -= 1
        else:
            pending.append(row)
    return pending
