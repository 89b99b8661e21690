"""Votes on side-by-side replies, as `posttrain serve --arena` writes them: one JSON object per line,

{"time": ISO-8601, "prompt": text, "model_a": name, "model_b": name, "reply_a": text, "reply_b": text,
 "winner": "a" | "b" | "tie" | "both_bad", "judge": "human"}

read into battles for `posttrain eval arena --votes`. "both_bad" counts as a tie, as Chatbot Arena counts it. A line
that is not JSON at all is what a crash in the middle of a write leaves (the page's writer starts the next vote on
a fresh line): it is skipped and counted. A JSON row that is not a valid vote is an error naming its file and line.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from posttrain.errors import UserError

WINNERS = ("a", "b", "tie", "both_bad")
TEXT_KEYS = ("time", "prompt", "model_a", "model_b", "reply_a", "reply_b", "winner", "judge")


def read_votes(files: list[Path]) -> tuple[dict[str, list[tuple[str, str, str]]], list[dict]]:
    """({judge: [(model_a, model_b, "a" | "b" | "tie")]}, [{file, rows, both_bad, unreadable}]); a bad row is a
    UserError naming its file and line. Blank lines are skipped, and so are lines that are not JSON (counted)."""
    battles: dict[str, list[tuple[str, str, str]]] = {}
    used = []
    for path in files:
        if not path.is_file():
            raise UserError(f"--votes {path}: no such file. Give the JSONL file `posttrain serve --arena` writes.")
        rows = both_bad = unreadable = 0
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                if not is_json(line):  # cut short by a crash while it was written
                    unreadable += 1
                    continue
                vote = parse_vote(line, f"{path}:{number}")
                outcome = "tie" if vote["winner"] == "both_bad" else vote["winner"]
                battles.setdefault(vote["judge"], []).append((vote["model_a"], vote["model_b"], outcome))
                rows += 1
                both_bad += vote["winner"] == "both_bad"
        used.append({"file": str(path), "rows": rows, "both_bad": both_bad, "unreadable": unreadable})
    if not any(battles.values()):
        raise UserError(f"--votes {', '.join(map(str, files))}: no votes in the file(s).")
    return battles, used


def is_json(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


def parse_vote(line: str, where: str) -> dict:
    """One vote row, checked key by key."""
    vote = json.loads(line)
    if not isinstance(vote, dict):
        raise UserError(f"{where}: not a JSON object but {type(vote).__name__}.")
    missing = [key for key in TEXT_KEYS if key not in vote]
    if missing:
        raise UserError(f"{where}: the vote lacks {', '.join(missing)}; a vote row holds {', '.join(TEXT_KEYS)}.")
    for key in TEXT_KEYS:
        if not isinstance(vote[key], str):
            raise UserError(f"{where}: {key} must be a string, got {json.dumps(vote[key])}.")
    for key in ("model_a", "model_b", "judge"):
        if not vote[key].strip():
            raise UserError(f"{where}: {key} is empty.")
    if vote["model_a"] == vote["model_b"]:
        raise UserError(f"{where}: model_a and model_b are both {vote['model_a']!r}; a vote compares two models.")
    if vote["winner"] not in WINNERS:
        raise UserError(f"{where}: winner {vote['winner']!r} is not one of {', '.join(WINNERS)}.")
    try:
        datetime.fromisoformat(vote["time"].replace("Z", "+00:00"))  # Python 3.10 reads no "Z"
    except ValueError:
        raise UserError(f"{where}: time {vote['time']!r} is not an ISO-8601 date and time.") from None
    return vote
