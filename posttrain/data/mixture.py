"""Data from several sources: `data.train: [a.jsonl, {path: b.jsonl, weight: 2}, {path: c.parquet, max_rows: 500}]`.

Each source is read and normalised on its own, so its format is detected on its own rows (an Alpaca file and a
ShareGPT file mix). `max_rows` caps what is read from a source (a seeded random subset, in file order); `weight`
multiplies a source's training rows after any eval rows were held out, so a repeated row never lands in both.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from posttrain.data.sources import Row, read_rows
from posttrain.sections import DataSource, Sources, as_sources


@dataclass
class Part:
    """The rows of one source, and (once normalised) its format and examples."""

    source: DataSource
    rows: list[Row]
    read: int  # rows in the source before max_rows
    format: str = ""
    examples: list = field(default_factory=list)
    weighted: int | None = None  # training rows after the weight, when one was given


def read_parts(spec: Sources, documents: str = "file", seed: int = 42) -> list[Part]:
    """Every source's rows, capped by its max_rows."""
    parts = []
    for source in as_sources(spec):
        rows = read_rows(source.path, documents)
        read = len(rows)
        if source.max_rows is not None and source.max_rows < read:
            keep = sorted(random.Random(seed).sample(range(read), source.max_rows))
            rows = [rows[i] for i in keep]
        parts.append(Part(source, rows, read))
    return parts


def read_mixture_rows(spec: Sources, documents: str = "file", seed: int = 42) -> tuple[list[Row], list[Part]]:
    """All rows of all sources, each source capped and weighted (for prompt sets, which hold nothing out)."""
    parts = read_parts(spec, documents, seed)
    rows = []
    for part in parts:
        order = weighted_order(len(part.rows), part.source.weight, seed)
        if part.source.weight is not None:
            part.weighted = len(order)
        rows += [part.rows[i] for i in order]
    return rows, parts


def weighted_order(count: int, weight: float | None, seed: int) -> list[int]:
    """Indices of `count` rows taken `weight` times: each whole time every row, the fraction a seeded sample."""
    if weight is None:
        return list(range(count))
    whole, fraction = divmod(weight, 1)
    extra = sorted(random.Random(seed).sample(range(count), round(fraction * count)))
    return list(range(count)) * int(whole) + extra


def source_lines(parts: list[Part], label: str = "train") -> list[str]:
    """One line per source of a mixture (nothing for a single plain source)."""
    if len(parts) == 1 and parts[0].source.weight is None and parts[0].source.max_rows is None:
        return []
    lines = [f"{label} sources:"]
    for part in parts:
        s = part.source
        what = f"{len(part.rows)} row{'s' * (len(part.rows) != 1)}"
        if part.read > len(part.rows):
            what += f" (max_rows {s.max_rows} of {part.read})"
        if part.weighted is not None:
            what += f", weight {s.weight:g} -> {part.weighted} {label} rows"
        kind = f"{part.format}, " if part.format else ""
        lines.append(f"  {s.path}: {kind}{what}")
    return lines


def source_counts(parts: list[Part]) -> list[dict]:
    """Rows per source for metrics.json."""
    return [
        {"path": p.source.path, "format": p.format, "rows": len(p.rows)}
        | ({"weighted_rows": p.weighted} if p.weighted is not None else {})
        for p in parts
    ]
