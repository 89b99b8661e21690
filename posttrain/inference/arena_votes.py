"""The arena's votes file: one JSON line per human vote, appended so that no crash or restart loses earlier votes.

Each vote is one line written with a single write, flushed and fsync'ed before the page says it is recorded. A
restart appends to the same file, never truncates it. A crash in the middle of a write can leave an unfinished last
line; the next vote then starts on a fresh line, so that broken line stays alone: it is not a vote, and the readers
skip it and say so (the page's count, and `eval arena --votes`). The row format is posttrain.evaluation.votes'.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from posttrain.errors import UserError
from posttrain.evaluation.votes import WINNERS


def vote_row(prompt: str, model_a: str, model_b: str, reply_a: str, reply_b: str, winner: str) -> dict:
    if winner not in WINNERS:
        raise ValueError(f"winner must be one of {WINNERS}, not {winner!r}")
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "prompt": prompt,
        "model_a": model_a,
        "model_b": model_b,
        "reply_a": reply_a,
        "reply_b": reply_b,
        "winner": winner,
        "judge": "human",
    }


@dataclass(frozen=True)
class Tally:
    votes: int
    skipped: int  # lines that are not a vote: left by a crash in the middle of a write, or written by hand


class VotesFile:
    """Appends votes to PATH; several browser tabs (threads of one page) write one at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = threading.Lock()

    def prepare(self) -> None:
        """Create the file (and its folder) if need be, so that a path that cannot be written fails at start, not
        at the first vote."""
        if self.path.is_dir():
            raise UserError(f"--votes {self.path} is a folder; give a .jsonl file path.")
        created = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("ab"):
                pass
        except OSError as err:
            raise UserError(f"--votes {self.path} cannot be written ({err.strerror}); give another path.") from None
        if created:
            sync_folder(self.path.parent)

    def append(self, row: dict) -> None:
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock, self.path.open("a+b") as handle:
            if not ends_a_line(handle):
                line = b"\n" + line  # after a crash's unfinished line: keep the two apart
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def tally(self) -> Tally:
        votes = skipped = 0
        with self.lock:
            text = self.path.read_bytes().decode("utf-8", errors="replace") if self.path.exists() else ""
        for line in text.splitlines():
            if line.strip():
                if is_vote(line):
                    votes += 1
                else:
                    skipped += 1
        return Tally(votes, skipped)


def ends_a_line(handle) -> bool:
    """Whether the file open in `handle` is empty or ends with a newline."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return True
    handle.seek(size - 1)
    return handle.read(1) == b"\n"


def is_vote(line: str) -> bool:
    try:
        row = json.loads(line)
    except json.JSONDecodeError:
        return False
    return isinstance(row, dict) and row.get("winner") in WINNERS


def sync_folder(folder: Path) -> None:
    """fsync a folder, so that a file just created in it survives a crash too (POSIX; elsewhere a no-op)."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
