"""The arena's votes file: one JSON line per human vote, appended so that no crash or restart loses earlier votes.

Each vote is one line written with a single write, flushed and fsync'ed before the page says it is recorded. A
restart appends to the same file, never truncates it. A crash in the middle of a write can leave an unfinished last
line; the next vote then starts on a fresh line, so that broken line stays alone: it is not a vote, and the readers
skip it and say so (the page's count, and `eval arena --votes`). The row format is posttrain.evaluation.votes', and
so is the check every vote passes before it is written (`check_vote`), so the page never counts a row that `eval
arena` refuses.

Each vote carries the id of the round it was cast in, and a round's vote is written once: an append holds an OS lock
on the file (fcntl.flock, so several servers on one file take turns too) while it looks for the id and writes.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from posttrain.errors import UserError
from posttrain.evaluation.votes import WINNERS, check_vote


def vote_row(
    prompt: str,
    model_a: str,
    model_b: str,
    reply_a: str,
    reply_b: str,
    winner: str,
    round_id: str,
    voter: str | None = None,
) -> dict:
    """A vote of round `round_id`; `voter` is the page's login name (None without --auth)."""
    if winner not in WINNERS:
        raise ValueError(f"winner must be one of {WINNERS}, not {winner!r}")
    return {
        "id": round_id,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "prompt": prompt,
        "model_a": model_a,
        "model_b": model_b,
        "reply_a": reply_a,
        "reply_b": reply_b,
        "winner": winner,
        "judge": "human",
        "voter": voter,
    }


@dataclass(frozen=True)
class Tally:
    votes: int  # each vote once
    skipped: int  # lines that are not a vote: left by a crash in the middle of a write, or written by hand
    duplicates: int = 0  # votes of a round already counted


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

    def append(self, row: dict) -> bool:
        """Write the vote unless its round's vote is already in the file; whether it was written. A row that is not
        a vote `eval arena` would count is a UserError, and nothing is written."""
        check_vote(row, f"the vote of round {row.get('id')}")
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        with self.lock, self.path.open("a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # released when the file closes
            handle.seek(0)
            if "id" in row and row["id"] in vote_ids(handle.read().decode("utf-8", errors="replace")):
                return False
            if not ends_a_line(handle):
                line = b"\n" + line  # after a crash's unfinished line: keep the two apart
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def tally(self) -> Tally:
        votes = skipped = duplicates = 0
        seen = set()
        with self.lock:
            text = self.path.read_bytes().decode("utf-8", errors="replace") if self.path.exists() else ""
        for line in filter(str.strip, text.splitlines()):
            vote = as_vote(line)
            if vote is None:
                skipped += 1
            elif vote.get("id") in seen:  # a vote from before ids (no id) is its own
                duplicates += 1
            else:
                votes += 1
                seen.update([vote["id"]] if "id" in vote else [])
        return Tally(votes, skipped, duplicates)


def ends_a_line(handle) -> bool:
    """Whether the file open in `handle` is empty or ends with a newline."""
    size = handle.seek(0, os.SEEK_END)
    if size == 0:
        return True
    handle.seek(size - 1)
    return handle.read(1) == b"\n"


def as_vote(line: str) -> dict | None:
    """The vote on this line, or None for a line `eval arena` would not count."""
    try:
        return check_vote(json.loads(line), "")
    except (json.JSONDecodeError, UserError):
        return None


def vote_ids(text: str) -> set[str]:
    return {vote["id"] for line in text.splitlines() if line.strip() and (vote := as_vote(line)) and "id" in vote}


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
