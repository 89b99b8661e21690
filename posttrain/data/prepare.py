"""From a recipe's `data:` section to checked train/eval rows, with a token-length report."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

from posttrain.data.feedback import is_feedback, normalise_feedback
from posttrain.data.formats import normalise
from posttrain.data.preferences import identical_pairs, normalise_preferences
from posttrain.data.sources import Row, read_rows
from posttrain.errors import UserError


@dataclass
class LengthReport:
    lengths: list[int]  # tokens per row, before any dropping or truncation
    max_length: int
    action: str  # what on_too_long did
    too_long: int = 0
    identical: int = 0  # preference pairs dropped because chosen == rejected

    def lines(self) -> list[str]:
        lengths = self.lengths
        lines = [
            f"tokens per row: min {min(lengths)}, median {int(statistics.median(lengths))}, "
            f"max {max(lengths)} (data.max_length {self.max_length})"
        ]
        lines += histogram(lengths, self.max_length)
        if self.too_long:
            verb = {"drop": "dropped", "truncate": "truncated to max_length"}[self.action]
            lines.append(f"{self.too_long} of {len(lengths)} rows longer than {self.max_length} tokens: {verb}")
        if self.identical:
            lines.append(f"{self.identical} pairs with chosen identical to rejected: dropped")
        return lines


@dataclass
class PreparedData:
    format: str
    train: list[dict]
    eval: list[dict] = field(default_factory=list)
    report: LengthReport | None = None

    @property
    def conversational(self) -> bool:
        return "messages" in self.train[0] or "prompt" in self.train[0]

    @property
    def strength_labels(self) -> bool:
        return any("strength" in row for row in self.eval)


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
        return chat_length(tokenizer, example["messages"])
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


def is_preference(rows: list[Row]) -> bool:
    return {"chosen", "rejected"} <= set(rows[0].data)


def load_examples(
    source: str, fmt: str, margins: dict | None = None, preference: bool | None = False, feedback: bool = False
):
    """(format, rows, examples) of a source: SFT rows, preference pairs or unpaired feedback (preference=None:
    decide by the rows). With feedback, a pair gives two examples, so its row is listed twice."""
    rows = read_rows(source)
    if preference is None:
        feedback, preference = is_feedback(rows), is_preference(rows)
    if feedback:
        return normalise_feedback(rows, fmt)
    if preference:
        fmt, examples = normalise_preferences(rows, fmt, margins)
    else:
        if is_feedback(rows):
            raise UserError(
                f"{source} has a label column: it is unpaired feedback (good/bad answers), which SFT would learn "
                "from as if every answer were good. Train on it with `posttrain kto`, or drop the label column "
                "(and the bad answers) to fine-tune on it."
            )
        fmt, examples = normalise(rows, fmt)
    return fmt, rows, examples


def drop_identical_pairs(rows: list[Row], examples: list[dict], action: str, label: str) -> tuple[list, list, int]:
    """Pairs whose chosen equals rejected teach nothing: drop them (counted) or refuse, per data.identical_pairs."""
    same = identical_pairs(rows, examples)
    if same and action == "error":
        raise UserError(
            f"{len(same)} of {len(rows)} {label} pairs have chosen identical to rejected (first at "
            f"{same[0].where}). Fix them, or set data.identical_pairs: drop."
        )
    keep = [i for i, e in enumerate(examples) if e["chosen"] != e["rejected"]]
    if not keep:
        raise UserError(f"every {label} pair has chosen identical to rejected; nothing to learn from.")
    return [rows[i] for i in keep], [examples[i] for i in keep], len(same)


def apply_max_length(rows, examples, lengths, max_length: int, action: str, label: str):
    """Keep, drop or refuse rows longer than max_length (truncation itself happens in TRL's tokenisation)."""
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if too_long and action == "error":
        raise UserError(
            f"{len(too_long)} of {len(rows)} {label} rows are longer than data.max_length={max_length} tokens "
            f"(longest {max(lengths)}, first at {rows[too_long[0]].where}). Raise data.max_length, or set "
            "data.on_too_long to drop or truncate."
        )
    if action == "drop":
        keep = set(range(len(rows))) - set(too_long)
        examples = [e for i, e in enumerate(examples) if i in keep]
        if not examples:
            raise UserError(
                f"every {label} row is longer than data.max_length={max_length} tokens "
                f"(shortest {min(lengths)}). Raise data.max_length."
            )
    return examples, len(too_long)


def prepare_data(
    data, tokenizer, seed: int = 42, preference: bool = False, margins: dict | None = None, feedback: bool = False
):
    """Read, check and measure the train (and eval) rows of a recipe's `data:` section."""

    def load(source: str, fmt: str, label: str):
        fmt, rows, examples = load_examples(source, fmt, margins, preference, feedback)
        identical = 0
        if preference:
            rows, examples, identical = drop_identical_pairs(rows, examples, data.identical_pairs, label)
        lengths = measure(tokenizer, rows, examples)
        kept, too_long = apply_max_length(rows, examples, lengths, data.max_length, data.on_too_long, label)
        return fmt, kept, LengthReport(lengths, data.max_length, data.on_too_long, too_long, identical)

    fmt, train, report = load(data.train, data.format, "train")
    evaluation: list[dict] = []
    if data.eval:
        _, evaluation, _ = load(data.eval, fmt, "eval")
    elif data.eval_fraction:
        train, evaluation = split(train, data.eval_fraction, seed)
    return PreparedData(fmt, train, evaluation, report)


def split(examples: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(len(examples) * fraction))
    if n_eval >= len(examples):
        raise UserError(f"data.eval_fraction={fraction} leaves no training rows out of {len(examples)}.")
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]
