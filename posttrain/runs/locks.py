"""One writer per output: an OS lock (fcntl.flock) on a lock file, held while a command writes there.

The kernel drops a flock when its holder's process ends, kill -9 included, so a lock is never stale: a lock file a
dead process left behind is simply free again. The file holds the holder's pid and command line, so that a second
command can say who is writing.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import sys
import time
from pathlib import Path

from posttrain.errors import UserError

_held: dict[Path, int] = {}  # lock file -> open descriptor, for the locks this process holds


def acquire(lock_file: Path, what: str) -> None:
    """Hold `lock_file` until release() or the end of this process; raise UserError naming the holder if another
    process holds it. `what` names the output in that message. Taking a lock this process holds is a no-op."""
    lock_file = lock_file.absolute()
    if holds(lock_file):
        return
    while True:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(fd)
            os.close(fd)
            raise UserError(busy_message(what, holder)) from None
        if same_file(fd, lock_file):
            break
        os.close(fd)  # the holder released (and removed) the file between our open and our lock: take the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n{command_line()}\n".encode())
    _held[lock_file] = fd


def holder(lock_file: Path) -> str | None:
    """Who holds `lock_file` ("pid N: COMMAND"), or None if it is free or held by this process. Takes nothing."""
    lock_file = lock_file.absolute()
    if holds(lock_file):
        return None
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_holder(fd)
    finally:
        os.close(fd)  # also drops the lock if we got it
    return None


def sibling_lock(output: Path) -> Path:
    """The lock file of an output that is a file or a folder of its own: .NAME.lock beside it."""
    return output.with_name(f".{output.name}.lock")


def refuse_if_busy(lock_file: Path, what: str) -> None:
    found = holder(lock_file)
    if found is not None:
        raise UserError(busy_message(what, found))


def release(lock_file: Path) -> None:
    """Drop a lock this process holds, removing its file first (acquire() sees the removal and retries)."""
    fd = _held.pop(lock_file.absolute(), None)
    if fd is None:
        return
    lock_file.unlink(missing_ok=True)
    os.close(fd)


def holds(lock_file: Path) -> bool:
    fd = _held.get(lock_file)
    if fd is not None and not same_file(fd, lock_file):  # the folder was removed and made again meanwhile
        os.close(_held.pop(lock_file))
        return False
    return fd is not None


def same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except FileNotFoundError:
        return False


def read_holder(fd: int) -> str:
    """The holder writes its pid just after locking; give it a moment if we looked in between."""
    for _ in range(20):
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        if text:
            pid, _, command = text.partition("\n")
            return f"pid {pid}: {command}" if command else f"pid {pid}"
        time.sleep(0.05)
    return "a process that has not said which"


def busy_message(what: str, holder: str) -> str:
    return (
        f"{what} is in use by another posttrain command ({holder}). Wait for it to finish or stop it, "
        "or choose another output."
    )


def command_line() -> str:
    """This command as the user typed it (`python -m posttrain` and the console script both show as posttrain)."""
    program = Path(sys.argv[0]).name if sys.argv else "python"
    program = "posttrain" if program in ("posttrain", "__main__.py") else program
    return shlex.join([program, *sys.argv[1:]])
