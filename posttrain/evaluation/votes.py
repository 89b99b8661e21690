"""Votes on side-by-side replies, as `posttrain serve --arena` writes them: one JSON object per line,

{"id": round id, "time": ISO-8601, "prompt": text, "model_a": name, "model_b": name, "reply_a": text,
 "reply_b": text, "winner": "a" | "b" | "tie" | "both_bad", "judge": "human", "voter": login name | null}

read into battles for `posttrain eval arena --votes`. "both_bad" counts as a tie, as Chatbot Arena counts it. A line
that is not JSON at all is what a crash in the middle of a write leaves (the page's writer starts the next vote on
a fresh line): it is skipped and counted. A JSON row that is not a valid vote is an error naming its file and line;
`check_vote` is the one test of a vote, which the page applies before it writes one.

Each vote counts once: a row whose id was seen before (a double submit, or the same votes in two files) is dropped
and counted. Rows written before votes had ids (no `id`, no `voter`) are all kept and counted as such.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from posttrain.errors import UserError

WINNERS = ("a", "b", "tie", "both_bad")
TEXT_KEYS = ("time", "prompt", "model_a", "model_b", "reply_a", "reply_b", "winner", "judge")
NO_LOGIN = "(no login)"  # the voter of a vote cast on a page without --auth


def read_votes(files: list[Path]) -> tuple[dict[str, list[tuple[str, str, str]]], list[dict]]:
    """({judge: [(model_a, model_b, "a" | "b" | "tie")]}, per file {file, rows, both_bad, unreadable, duplicates,
    without_id, voters}); a bad row is a UserError naming its file and line. Blank lines are skipped, and so are
    lines that are not JSON (counted); a vote whose id was seen before, in this file or an earlier one, is dropped
    (counted)."""
    battles: dict[str, list[tuple[str, str, str]]] = {}
    used, seen = [], set()
    for path in files:
        if not path.is_file():
            raise UserError(f"--votes {path}: no such file. Give the JSONL file `posttrain serve --arena` writes.")
        counts = {"file": str(path), "rows": 0, "both_bad": 0, "unreadable": 0, "duplicates": 0, "without_id": 0}
        voters: dict[str, int] = {}
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                if not is_json(line):  # cut short by a crash while it was written
                    counts["unreadable"] += 1
                    continue
                vote = parse_vote(line, f"{path}:{number}")
                if "id" in vote:  # rows from before votes had ids cannot be told apart
                    if vote["id"] in seen:
                        counts["duplicates"] += 1
                        continue
                    seen.add(vote["id"])
                outcome = "tie" if vote["winner"] == "both_bad" else vote["winner"]
                battles.setdefault(vote["judge"], []).append((vote["model_a"], vote["model_b"], outcome))
                counts["rows"] += 1
                counts["both_bad"] += vote["winner"] == "both_bad"
                counts["without_id"] += "id" not in vote
                voter = vote.get("voter") or NO_LOGIN
                voters[voter] = voters.get(voter, 0) + 1
        used.append(counts | {"voters": voters})
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
    return check_vote(json.loads(line), where)


def check_vote(vote, where: str) -> dict:
    """The vote, if it is one `eval arena` counts; else a UserError naming `where` and what is wrong. The arena page
    checks every vote with this before it writes it."""
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
    for key in ("id", "voter"):  # optional: votes written before votes had ids have neither
        if vote.get(key) is not None and not (isinstance(vote[key], str) and vote[key].strip()):
            raise UserError(f"{where}: {key} must be a non-empty string, got {json.dumps(vote[key])}.")
    if "id" in vote and vote["id"] is None:
        raise UserError(f"{where}: id is null; a vote's id is the round it was cast in.")
    if vote["model_a"] == vote["model_b"]:
        raise UserError(f"{where}: model_a and model_b are both {vote['model_a']!r}; a vote compares two models.")
    if vote["winner"] not in WINNERS:
        raise UserError(f"{where}: winner {vote['winner']!r} is not one of {', '.join(WINNERS)}.")
    try:
        datetime.fromisoformat(vote["time"].replace("Z", "+00:00"))  # Python 3.10 reads no "Z"
    except ValueError:
        raise UserError(f"{where}: time {vote['time']!r} is not an ISO-8601 date and time.") from None
    return vote
