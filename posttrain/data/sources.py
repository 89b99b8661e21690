"""Reading rows from a data source: a local file, a folder or glob of files, a hub dataset id, or `builtin:NAME`
shipped with posttrain. Plain-text files (.txt, .md) become `text` rows for continued pretraining: one document per
file, or one per blank-line-separated section."""

from __future__ import annotations

import csv
import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import UserError

BUILTIN = Path(__file__).parent / "builtin"
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
TEXT_SUFFIXES = (".txt", ".md")
BLANK_LINES = re.compile(r"\n\s*\n")


@dataclass
class Row:
    """One record and where it came from, so every message can point at it."""

    data: dict
    where: str  # e.g. "train.jsonl line 7"


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN.glob("*.jsonl"))


def read_rows(source: str, documents: str = "file") -> list[Row]:
    """All rows of a source; an unreadable or empty source is a UserError. `documents` says what one document of a
    .txt/.md file is: the whole file, or each blank-line-separated section."""
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        path = BUILTIN / f"{name}.jsonl"
        if not path.is_file():
            raise UserError(f"no built-in dataset {name!r}. Built-in: {', '.join(builtin_names())}.")
        rows = _read_file(path, source, documents)
    elif Path(source).expanduser().is_dir() or glob.has_magic(source):
        rows = [row for path in _files_of(source) for row in _read_file(path, str(path), documents)]
    elif Path(source).expanduser().exists():
        rows = _read_file(Path(source).expanduser(), source, documents)
    elif source.startswith((".", "/", "~")) or Path(source).suffix in SUFFIXES + TEXT_SUFFIXES:
        raise UserError(f"data file not found: {source}")
    else:
        rows = _read_hub(source)
    if not rows:
        raise UserError(f"{source} holds no rows: the dataset is empty.")
    return rows


def _files_of(source: str) -> list[Path]:
    """The data files of a folder (searched recursively) or a glob, in name order."""
    root = Path(source).expanduser()
    found = root.rglob("*") if root.is_dir() else (Path(p) for p in glob.glob(str(root), recursive=True))
    files = sorted(p for p in found if p.is_file() and p.suffix.lower() in SUFFIXES + TEXT_SUFFIXES)
    if not files:
        kinds = ", ".join(SUFFIXES + TEXT_SUFFIXES)
        raise UserError(f"{source} matches no data files ({kinds}).")
    return files


def _read_text(path: Path, label: str, documents: str) -> list[Row]:
    text = path.read_text(encoding="utf-8")
    if documents == "file":
        return [Row({"text": text}, label)] if text.strip() else []
    sections = [part.strip() for part in BLANK_LINES.split(text)]
    return [Row({"text": part}, f"{label} section {i}") for i, part in enumerate(sections, start=1) if part]


def _read_file(path: Path, label: str, documents: str = "file") -> list[Row]:
    suffix = path.suffix.lower()
    try:
        if suffix in TEXT_SUFFIXES:
            return _read_text(path, label, documents)
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
    raise UserError(
        f"{label}: unsupported file type {suffix or '(none)'}; use .jsonl, .json, .csv, .parquet, .txt or .md."
    )


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
