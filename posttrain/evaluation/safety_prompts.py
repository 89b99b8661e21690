"""The prompts of `posttrain eval safety`, each with its groups, read from the file shapes people have at hand.

- BOLD's own files (github.com/amazon-science/bold, `prompts/*_prompt.json`): `{category: {name: [prompts]}}`.
  The domain is the file name before `_prompt` (gender_prompt.json -> gender), the category a top-level key.
- ToxiGen's own files (github.com/microsoft/TOXIGEN, `prompts/hate_asian_1k.txt`): one prompt per line, its line
  breaks written as the two characters `\\n`; the kind of prompt (hate or neutral) and the target group come from
  the file name.
- A folder of either reads every such file directly inside it.
- Anything else posttrain reads (.jsonl/.csv/.json/.parquet, a hub dataset): rows with a prompt column holding a
  text or a list of texts (the hub copy of BOLD). Its groups are the --group-column values, or, with none named,
  the known group columns of the first row (ToxiGen's `target_group`/`group`, BOLD's `domain`/`category`).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import UserError

BOLD_FILE = re.compile(r"^(?P<domain>.+)_prompt\.json$")
TOXIGEN_FILE = re.compile(r"^(?P<prompt_label>hate|neutral)_(?P<target_group>.+?)(?:_1k)?\.txt$")
BOLD_GROUPS = ("domain", "category")
TOXIGEN_GROUPS = ("target_group", "prompt_label")
KNOWN_GROUP_COLUMNS = ("domain", "category", "target_group", "group")


@dataclass(frozen=True)
class SafetyPrompt:
    text: str
    where: str  # file and row (and the item of a list of prompts)
    groups: dict[str, str]


@dataclass(frozen=True)
class PromptSet:
    shape: str  # "BOLD files", "ToxiGen files" or "rows"
    rows: int  # rows of the file (people of BOLD's files, lines of ToxiGen's)
    prompts: list[SafetyPrompt]
    group_columns: tuple[str, ...]


def read_safety_prompts(source: str, prompt_column: str, group_columns: tuple[str, ...]) -> PromptSet:
    """The prompts of `source` and the group columns they are reported by."""
    files = published_files(source)
    if not files:
        return read_prompt_rows(source, prompt_column, group_columns)
    bold = [f for f in files if BOLD_FILE.match(f.name)]
    shape, columns = ("BOLD files", BOLD_GROUPS) if bold else ("ToxiGen files", TOXIGEN_GROUPS)
    if bold and len(bold) != len(files):
        raise UserError(f"{source}: holds both BOLD and ToxiGen prompt files; evaluate one benchmark at a time.")
    unknown = [c for c in group_columns if c not in columns]
    if unknown:
        raise UserError(
            f"--group-column {unknown[0]}: {source} is read as {shape}, whose groups are {' and '.join(columns)}."
        )
    rows, prompts = 0, []
    for path in files:
        read = read_bold_file(path) if bold else read_toxigen_file(path)
        rows += read[0]
        prompts += read[1]
    if not prompts:
        raise UserError(f"{source} holds no prompts.")
    return PromptSet(shape, rows, prompts, tuple(group_columns) or columns)


def published_files(source: str) -> list[Path]:
    """BOLD's or ToxiGen's own prompt files at `source` (a file, or a folder holding them); none for anything else."""
    path = Path(source).expanduser()
    if path.is_file():
        return [path] if is_published(path) else []
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and is_published(p))
    return []


def is_published(path: Path) -> bool:
    return bool(BOLD_FILE.match(path.name) and bold_shaped(path)) or bool(TOXIGEN_FILE.match(path.name))


def bold_shaped(path: Path) -> bool:
    """Whether a *_prompt.json file opens as BOLD's {category: {name: [prompts]}} (not a list of rows)."""
    with path.open(encoding="utf-8") as handle:
        return handle.read(64).lstrip().startswith("{")


def read_bold_file(path: Path) -> tuple[int, list[SafetyPrompt]]:
    """(people, prompts) of one of BOLD's `{category: {name: [prompts]}}` files."""
    domain = BOLD_FILE.match(path.name)["domain"]
    try:
        categories = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path} as BOLD's prompt file: {err}") from None
    shape = "BOLD's {category: {name: [prompts]}}"
    if not isinstance(categories, dict):
        raise UserError(f"{path}: expected {shape}.")
    people, prompts = 0, []
    for category, names in categories.items():
        if not isinstance(names, dict):
            raise UserError(f"{path} category {category!r}: expected {shape}, found {type(names).__name__}.")
        for name, texts in names.items():
            if not isinstance(texts, list) or not all(isinstance(t, str) and t.strip() for t in texts):
                raise UserError(f"{path} {category}/{name}: expected a list of prompt texts.")
            people += 1
            groups = {"domain": domain, "category": category}
            prompts += [SafetyPrompt(t, f"{path} {category}/{name} prompt {i}", groups) for i, t in enumerate(texts, 1)]
    return people, prompts


def read_toxigen_file(path: Path) -> tuple[int, list[SafetyPrompt]]:
    """(lines, prompts) of one of ToxiGen's prompt files: a prompt a line, `\\n` standing for its line breaks."""
    match = TOXIGEN_FILE.match(path.name)
    groups = {"target_group": match["target_group"], "prompt_label": match["prompt_label"]}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    prompts = [
        SafetyPrompt(line.strip().replace("\\n", "\n"), f"{path} line {number}", groups)
        for number, line in enumerate(lines, start=1)
        if line.strip()
    ]
    return len(prompts), prompts


def read_prompt_rows(source: str, prompt_column: str, group_columns: tuple[str, ...]) -> PromptSet:
    """Rows whose prompt column holds one text, or a list of texts (BOLD's `prompts` on the hub)."""
    from posttrain.data.prompts import problem_report
    from posttrain.data.sources import read_rows

    rows = read_rows(source)
    if not group_columns:
        group_columns = tuple(c for c in KNOWN_GROUP_COLUMNS if rows[0].data.get(c) not in (None, ""))
    prompts, problems = [], []
    for row in rows:
        value = row.data.get(prompt_column)
        texts = value if isinstance(value, list) else [value]
        missing = [c for c in group_columns if row.data.get(c) in (None, "")]
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            problems.append(f"{row.where}: no prompt text in column {prompt_column!r} (keys: {', '.join(row.data)})")
        elif missing:
            problems.append(f"{row.where}: no value in group column(s) {', '.join(missing)}")
        else:
            groups = {c: str(row.data[c]) for c in group_columns}
            where = [row.where] if len(texts) == 1 else [f"{row.where} prompt {i}" for i in range(1, len(texts) + 1)]
            prompts += [SafetyPrompt(t, w, groups) for t, w in zip(texts, where, strict=True)]
    if problems:
        usable = len(rows) - len(problems)
        raise UserError(
            problem_report(source, len(rows), problems, usable)
            + f" Name the prompt column with --prompt-column (now {prompt_column!r})."
        )
    return PromptSet("rows", len(rows), prompts, group_columns)
