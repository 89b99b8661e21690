"""From a recipe's `data:` section to checked train/eval rows, with a token-length report.

One source or a mixture (posttrain.data.mixture); text documents joined into blocks (posttrain.data.text_blocks);
preference pairs too long for max_length keep their answers by losing the start of the prompt
(posttrain.data.prompt_cut); every other row longer than max_length is dropped, truncated or refused (on_too_long).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from posttrain.data.feedback import is_feedback, normalise_feedback
from posttrain.data.formats import normalise
from posttrain.data.lengths import (  # noqa: F401 (chat_length: other modules import it from here)
    LengthReport,
    chat_length,
    measure,
)
from posttrain.data.mixture import Part, read_parts, source_counts, source_lines, weighted_order
from posttrain.data.preferences import identical_pairs, normalise_preferences
from posttrain.data.prompt_cut import cut_prompt, pair_length
from posttrain.data.sources import Row, read_rows
from posttrain.data.text_blocks import pack_documents
from posttrain.errors import UserError


@dataclass
class PreparedData:
    format: str
    train: list[dict]
    eval: list[dict] = field(default_factory=list)
    report: LengthReport | None = None
    train_lengths: list[int] = field(default_factory=list)  # tokens of each training row as it will be trained
    sources: list[dict] = field(default_factory=list)  # rows per source, for metrics.json

    @property
    def conversational(self) -> bool:
        return "messages" in self.train[0] or "prompt" in self.train[0]

    @property
    def pretokenized(self) -> bool:
        """Text joined into token blocks (continued pretraining)."""
        return "input_ids" in self.train[0]

    @property
    def strength_labels(self) -> bool:
        return any("strength" in row for row in self.eval)


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
        refuse_feedback_for_sft(rows, source)
        fmt, examples = normalise(rows, fmt)
    return fmt, rows, examples


def refuse_feedback_for_sft(rows: list[Row], source) -> None:
    if is_feedback(rows):
        raise UserError(
            f"{source} has a label column: it is unpaired feedback (good/bad answers), which SFT would learn "
            "from as if every answer were good. Train on it with `posttrain kto`, or drop the label column "
            "(and the bad answers) to fine-tune on it."
        )


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


def normalise_part(part: Part, fmt: str, margins: dict | None, preference: bool, feedback: bool) -> None:
    if feedback:  # a pair gives two examples, so its row is listed twice
        part.format, part.rows, part.examples = normalise_feedback(part.rows, fmt)
    elif preference:
        part.format, part.examples = normalise_preferences(part.rows, fmt, margins)
    else:
        refuse_feedback_for_sft(part.rows, part.source.path)
        part.format, part.examples = normalise(part.rows, fmt)


def load_parts(spec, data, margins: dict | None, preference: bool, feedback: bool, seed: int, label: str):
    """Every source read and normalised on its own; a mixture of raw text and conversations is refused."""
    parts = read_parts(spec, data.documents, seed)
    for part in parts:
        normalise_part(part, data.format, margins, preference, feedback)
    text = [p.source.path for p in parts if "text" in p.examples[0]]
    if text and len(text) < len(parts):
        other = next(p.source.path for p in parts if "text" not in p.examples[0])
        raise UserError(
            f"data.{label} mixes raw text ({text[0]}) with conversations ({other}); a run trains on one kind. "
            "Give conversations only, or text only."
        )
    return parts


def mixture_format(parts: list[Part]) -> str:
    return " + ".join(dict.fromkeys(p.format for p in parts))


def prepare_data(
    data, tokenizer, seed: int = 42, preference: bool = False, margins: dict | None = None, feedback: bool = False
):
    """Read, check and measure the train (and eval) rows of a recipe's `data:` section (feedback: unpaired rows
    with a label, for kto)."""
    parts = load_parts(data.train, data, margins, preference, feedback, seed, "train")
    rows = [row for part in parts for row in part.rows]
    examples = [example for part in parts for example in part.examples]
    origin = [number for number, part in enumerate(parts) for _ in part.rows]
    train = list(range(len(rows)))
    eval_rows, eval_examples = [], []
    if data.eval:
        eval_parts = load_parts(data.eval, data, margins, preference, feedback, seed, "eval")
        eval_rows = [row for part in eval_parts for row in part.rows]
        eval_examples = [example for part in eval_parts for example in part.examples]
    elif data.eval_fraction:
        train, held = split_indices(len(rows), data.eval_fraction, seed)
        eval_rows, eval_examples = [rows[i] for i in held], [examples[i] for i in held]
    order = weighted(train, origin, parts, seed)
    rows, examples = [rows[i] for i in order], [examples[i] for i in order]
    if "text" in examples[0] and data.text_blocks:
        return text_blocks(data, tokenizer, parts, examples, eval_examples)
    kept, lengths, report = fit_to_length(data, tokenizer, rows, examples, preference, "train")
    report.sources = source_lines(parts)
    evaluation = fit_to_length(data, tokenizer, eval_rows, eval_examples, preference, "eval")[0] if eval_rows else []
    return PreparedData(mixture_format(parts), kept, evaluation, report, lengths, source_counts(parts))


def weighted(train: list[int], origin: list[int], parts: list[Part], seed: int) -> list[int]:
    """The training rows with each source's weight applied (after the eval rows were held out)."""
    order = []
    for number, part in enumerate(parts):
        mine = [i for i in train if origin[i] == number]
        picks = weighted_order(len(mine), part.source.weight, seed)
        part.weighted = len(picks) if part.source.weight is not None else None
        order += [mine[k] for k in picks]
    return order


def text_blocks(data, tokenizer, parts: list[Part], examples: list[dict], eval_examples: list[dict]):
    """Continued pretraining: documents joined with EOS and cut into max_length blocks, every token kept."""
    train, blocks = pack_documents(tokenizer, [e["text"] for e in examples], data.max_length)
    evaluation = pack_documents(tokenizer, [e["text"] for e in eval_examples], data.max_length)[0]
    report = LengthReport(
        blocks.lengths, data.max_length, "blocks", blocks=blocks, sources=source_lines(parts), unit="document"
    )
    train_lengths = [len(block["input_ids"]) for block in train]
    return PreparedData(mixture_format(parts), train, evaluation, report, train_lengths, source_counts(parts))


def fit_to_length(data, tokenizer, rows: list[Row], examples: list[dict], preference: bool, label: str):
    """(kept examples, their trained lengths, report): identical pairs dropped, too-long prompts cut, then
    data.on_too_long for what is still too long."""
    identical = 0
    if preference:
        rows, examples, identical = drop_identical_pairs(rows, examples, data.identical_pairs, label)
    lengths = measure(tokenizer, rows, examples)
    fitted, cut = list(lengths), 0
    if preference and data.cut_long_prompts:
        examples = list(examples)
        for i, n in enumerate(lengths):
            if n > data.max_length and (shorter := cut_prompt(tokenizer, examples[i], data.max_length)) is not None:
                examples[i], fitted[i], cut = shorter, pair_length(tokenizer, shorter["prompt"], shorter), cut + 1
    kept, too_long = apply_max_length(rows, examples, fitted, data.max_length, data.on_too_long, label)
    trained = [min(n, data.max_length) for n in fitted if n <= data.max_length or data.on_too_long != "drop"]
    unit = "pair" if preference else "row"
    report = LengthReport(
        lengths, data.max_length, data.on_too_long, too_long, identical, cut, unit=unit, cut_tried=cut > 0
    )
    return kept, trained, report


def split_indices(count: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) row indices: a seeded random `fraction` held out, at least one row."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_eval = max(1, round(count * fraction))
    if n_eval >= count:
        raise UserError(f"data.eval_fraction={fraction} leaves no training rows out of {count}.")
    held = set(order[:n_eval])
    return [i for i in range(count) if i not in held], sorted(held)
