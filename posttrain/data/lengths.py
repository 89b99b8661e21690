"""Token lengths: of a conversation, a training example, a set of them (with a histogram), and the report of what
the length limit did to a data set."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

from posttrain.data.sources import Row
from posttrain.data.text_blocks import BlockReport
from posttrain.errors import UserError


@dataclass
class LengthReport:
    lengths: list[int]  # tokens per row, before any cutting, dropping or truncation
    max_length: int
    action: str  # what on_too_long did
    too_long: int = 0  # rows still longer than max_length after any prompt cutting
    identical: int = 0  # preference pairs dropped because chosen == rejected
    prompts_cut: int = 0  # preference pairs kept by cutting their prompt from the left
    blocks: BlockReport | None = None  # text documents joined and cut into blocks
    sources: list[str] = field(default_factory=list)  # rows per source of a mixture
    unit: str = "row"  # row, pair or document
    cut_tried: bool = False  # prompts of too-long pairs were cut before on_too_long applied

    def lines(self) -> list[str]:
        lengths = self.lengths
        unit = self.unit
        lines = list(self.sources) + [
            f"tokens per {unit}: min {min(lengths)}, median {int(statistics.median(lengths))}, "
            f"max {max(lengths)} (data.max_length {self.max_length})"
        ]
        lines += histogram(lengths, self.max_length)
        if self.blocks:
            return lines + [self.blocks.line()]
        if self.prompts_cut:
            over = self.prompts_cut + self.too_long
            lines.append(
                f"{over} of {len(lengths)} pairs longer than {self.max_length} tokens: {self.prompts_cut} kept by "
                "cutting the prompt from the left (data.cut_long_prompts)"
            )
        if self.too_long:
            verb = {"drop": "dropped", "truncate": "truncated to max_length"}[self.action]
            even = " even with the prompt cut" if self.cut_tried else ""
            over = f"{self.too_long} of {len(lengths)} {unit}s longer than {self.max_length} tokens{even}"
            lines.append(f"{over}: {verb}")
        if self.identical:
            pairs = "1 pair" if self.identical == 1 else f"{self.identical} pairs"
            lines.append(f"{pairs} with chosen identical to rejected: dropped")
        return lines


def histogram(lengths: list[int], max_length: int, width: int = 30) -> list[str]:
    """Rows per token-length bucket (powers of two), the part beyond max_length on its own line."""
    edges = [0]
    while edges[-1] < max_length:
        edges.append(min(max(2 * edges[-1], 16), max_length))
    buckets = [(lo, hi - 1) for lo, hi in zip(edges, edges[1:], strict=False)]
    counts = [sum(lo <= n <= hi for n in lengths) for lo, hi in buckets]
    labels = [f"{lo:>6}-{hi:<6}" for lo, hi in buckets]
    over = sum(n >= max_length for n in lengths)
    counts.append(over)
    labels.append(f"  >= {max_length:<7}")
    scale = width / max(max(counts), 1)
    return [
        f"  {label} {count:>6} {'#' * round(count * scale)}"
        for label, count in zip(labels, counts, strict=True)
        if count or label.strip()[0] != ">"
    ]


def chat_length(tokenizer, messages: list[dict], **kwargs) -> int:
    return len(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)["input_ids"])


def token_length(tokenizer, example: dict) -> int:
    """Tokens of a training example; for a preference pair, its longer side."""
    if "completion" in example:  # unpaired feedback
        return chat_length(tokenizer, example["prompt"] + example["completion"])
    if "chosen" in example:
        return max(chat_length(tokenizer, example["prompt"] + example[side]) for side in ("chosen", "rejected"))
    if "messages" in example:
        return chat_length(tokenizer, example["messages"], tools=example.get("tools"))
    return len(tokenizer(example["text"])["input_ids"]) + 1  # + the EOS that training appends


def measure(tokenizer, rows: list[Row], examples: list[dict]) -> list[int]:
    from jinja2 import TemplateError

    lengths = []
    for row, example in zip(rows, examples, strict=True):
        try:
            lengths.append(token_length(tokenizer, example))
        except TemplateError as err:
            raise UserError(f"{row.where}: the chat template rejects this conversation: {err}") from None
    return lengths


def summary(name: str, lengths: list[int]) -> str:
    return f"{name} tokens: min {min(lengths)}, median {int(statistics.median(lengths))}, max {max(lengths)}"


def preference_length_lines(tokenizer, examples: list[dict]) -> list[str]:
    """Prompt and response lengths of preference pairs (responses counted after the rendered prompt)."""
    prompts = [chat_length(tokenizer, e["prompt"], add_generation_prompt=True) for e in examples]
    lines = [summary("prompt", prompts)]
    for side in ("chosen", "rejected"):
        full = [chat_length(tokenizer, e["prompt"] + e[side]) for e in examples]
        lines.append(summary(side, [f - p for f, p in zip(full, prompts, strict=True)]))
    return lines
