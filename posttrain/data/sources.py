"""Reading rows from a data source: a local file, a hub dataset id, or `builtin:NAME` shipped with posttrain."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import UserError

BUILTIN = Path(__file__).parent / "builtin"
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class Row:
    """One record and where it came from, so every message can point at it."""

    data: dict
    where: str  # e.g. "train.jsonl line 7"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN.glob("*.jsonl"))


def read_rows(source: str) -> list[Row]:
    """All rows of a source; an unreadable or empty source is a UserError."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        path = BUILTIN / f"{name}.jsonl"
        if not path.is_file():
            raise UserError(f"no built-in dataset {name!r}. Built-in: {', '.join(builtin_names())}.")
        rows = _read_file(path, label=source)
    elif Path(source).expanduser().exists():
        rows = _read_file(Path(source).expanduser(), label=source)
    elif source.startswith((".", "/", "~")) or Path(source).suffix in SUFFIXES:
        raise UserError(f"data file not found: {source}")
    else:
        rows = _read_hub(source)
    if not rows:
        raise UserError(f"{source} holds no rows: the dataset is empty.")
    return rows


def _read_file(path: Path, label: str) -> list[Row]:
    if path.is_dir():
        raise UserError(f"{label} is a folder; give a .jsonl, .json, .csv or .parquet file.")
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            return _read_jsonl(path, label)
        if suffix == ".json":
            return _read_json(path, label)
        if suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                return [Row(r, f"{label} row {i}") for i, r in enumerate(csv.DictReader(handle), start=1)]
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            return [Row(r, f"{label} row {i}") for i, r in enumerate(pq.read_table(path).to_pylist(), start=1)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(f"cannot read {label}: {err}") from None
    except Exception as err:  # pyarrow raises its own types for a corrupt file
        if suffix == ".parquet":
            raise UserError(f"cannot read {label} as parquet: {err}") from None
        raise
    raise UserError(f"{label}: unsupported file type {suffix or '(none)'}; use .jsonl, .json, .csv or .parquet.")


def _read_jsonl(path: Path, label: str) -> list[Row]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{label} line {number}: not valid JSON ({err.msg}).") from None
        if not isinstance(record, dict):
            raise UserError(f"{label} line {number}: expected a JSON object, found {type(record).__name__}.")
        rows.append(Row(record, f"{label} line {number}"))
    return rows


def _read_json(path: Path, label: str) -> list[Row]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON Lines saved as .json
            return _read_jsonl(path, label)
        raise UserError(f"{label}: not valid JSON at line {err.lineno} ({err.msg}).") from None
    if isinstance(records, dict) and len(records) == 1 and isinstance(next(iter(records.values())), list):
        records = next(iter(records.values()))  # {"train": [...]} or {"data": [...]}
    if not isinstance(records, list):
        raise UserError(f"{label}: expected a JSON list of objects (or JSON Lines).")
    rows = []
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise UserError(f"{label} row {number}: expected a JSON object, found {type(record).__name__}.")
        rows.append(Row(record, f"{label} row {number}"))
    return rows


def _read_hub(dataset_id: str) -> list[Row]:
    """A hub dataset's train split (`org/name`, or `org/name:split`)."""
    import datasets

    from posttrain.models.hub import hub_resolves

    name, _, split = dataset_id.partition(":")
    if not (datasets.config.HF_HUB_OFFLINE or hub_resolves()):
        raise UserError(
            f"cannot load dataset {dataset_id}: it is not a local file and the Hugging Face hub cannot be reached "
            "(offline?). Connect and retry, give a local file or builtin:NAME, or set HF_DATASETS_OFFLINE=1 to "
            "use a copy already in the datasets cache."
        )
    try:
        dataset = datasets.load_dataset(name, split=split or "train")
    except Exception as err:  # datasets raises many types for offline / missing / gated
        raise UserError(
            f"cannot load dataset {dataset_id}: it is not a local file, and the hub did not serve it "
            f"({type(err).__name__}: {str(err)[:200]}). Check the name and network, or log in with "
            "`huggingface-cli login` for a gated set."
        ) from None
    return [Row(record, f"{dataset_id} row {i}") for i, record in enumerate(dataset, start=1)]
