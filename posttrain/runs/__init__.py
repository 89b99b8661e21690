"""The run folder every stage writes.

A run is finished once metrics.json exists; it is written last. The adapter is saved beside its final place and
renamed into it, so a crash never leaves a half-written adapter that looks complete. One command writes a run
folder at a time: it holds an OS lock on the folder's .lock file from its claim to its end (runs/locks.py).
A checkpoint counts only once it is complete (see checkpoint_complete); --resume continues from the last such one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from posttrain.errors import UserError
from posttrain.launch import is_main_process
from posttrain.runs import locks

LIBRARIES = ("posttrain", "torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate")


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


# A TRL checkpoint is complete once its trainer_state.json reads back: transformers' Trainer._save_checkpoint writes
# it after the weights, optimizer, scheduler and RNG states (and only then deletes older checkpoints). posttrain's
# PPO writes state.pt under checkpoint-N.partial and renames the folder when done.
COMPLETE_MARKERS = ("trainer_state.json", "state.pt")
# What a failed write of a checkpoint, adapter or report looks like: a full disk or quota, no permission, read-only.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS}


def step_of(folder: Path) -> int:
    return int(folder.name.rpartition("-")[2])


def marker_written(path: Path) -> bool:
    """The file exists and, if JSON, reads back whole (a kill while it was being written leaves it cut short)."""
    if path.suffix != ".json":
        return path.is_file()
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


class RunFolder:
    def __init__(self, path: str | Path, checkpoint_pattern: str = "checkpoint-*", markers=COMPLETE_MARKERS):
        self.path = Path(path).expanduser()
        self.checkpoint_pattern = checkpoint_pattern  # NAME-NUMBER folders under checkpoints/
        self.markers = markers  # files that say a checkpoint is complete; () for any NAME-NUMBER folder

    adapter = property(lambda self: self.path / "adapter")
    checkpoints = property(lambda self: self.path / "checkpoints")
    lock_file = property(lambda self: self.path / ".lock")
    logs = property(lambda self: self.path / "logs")
    metrics_file = property(lambda self: self.path / "metrics.json")
    recipe_file = property(lambda self: self.path / "recipe.yaml")

    @property
    def finished(self) -> bool:
        return self.metrics_file.is_file()

    # ------------------------------------------------------------ checkpoints

    def checkpoint_folders(self) -> list[Path]:
        """NAME-NUMBER folders by step, complete or not (a staging NAME-NUMBER.partial is not one)."""
        found = [p for p in self.checkpoints.glob(self.checkpoint_pattern) if p.name.rpartition("-")[2].isdigit()]
        return sorted(found, key=step_of)

    def checkpoint_complete(self, folder: Path) -> bool:
        return not self.markers or any(marker_written(folder / marker) for marker in self.markers)

    def latest_checkpoint(self) -> Path | None:
        """The last complete checkpoint: a crash or a full disk during a save leaves an incomplete one, skipped."""
        complete = [p for p in self.checkpoint_folders() if self.checkpoint_complete(p)]
        return complete[-1] if complete else None

    def resume_from(self, main: bool = True, echo=print) -> Path | None:
        """The checkpoint --resume continues from. The main process removes the incomplete ones after it (a save
        that never finished) and says so, so that the trainer writes those steps afresh."""
        latest = self.latest_checkpoint()
        if main:
            for folder in self.checkpoint_folders():
                if latest is None or step_of(folder) > step_of(latest):
                    echo(f"resume: {folder} is incomplete (stopped while it was being saved); removed")
                    shutil.rmtree(folder)
            for staging in self.checkpoints.glob("*.partial"):
                shutil.rmtree(staging)
            if latest is not None:
                echo(f"resume: continuing after step {step_of(latest)} from {latest}")
        return latest

    # ------------------------------------------------------------ claiming the folder

    def check_writable(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse, before anything is written, to clobber a finished run, a folder that is not a run, or a run that
        another command is writing (the processes accelerate launched beside the main one do not look at the lock:
        their main process holds it)."""
        where = self.path
        if is_main_process():
            locks.refuse_if_busy(self.lock_file, f"run folder {where}")
        exists = where.is_dir() and any(p.name != self.lock_file.name for p in where.iterdir())
        is_run = self.recipe_file.is_file()
        if resume:
            if is_run and self.latest_checkpoint() is None and self.checkpoint_folders():
                raise UserError(
                    f"--resume: {where} holds no complete checkpoint, only one whose save never finished. Start the "
                    "run again with --overwrite."
                )
            if not is_run or self.latest_checkpoint() is None:
                raise UserError(
                    f"--resume: {where} holds no checkpoint to resume from. Start the run without --resume."
                )
            if self.finished:
                raise UserError(f"--resume: {where} is already finished (metrics.json exists).")
            return
        if not exists:
            return
        if not is_run:
            raise UserError(
                f"output_dir {where} exists and is not a posttrain run; choose another output_dir "
                "(--output-dir DIR). Nothing was written."
            )
        if overwrite:
            return
        if self.finished:
            raise UserError(
                f"output_dir {where} already holds a finished run. Choose another output_dir "
                "(--output-dir DIR), or pass --overwrite to replace it."
            )
        if self.latest_checkpoint() is None:
            raise UserError(
                f"output_dir {where} holds an unfinished run with no complete checkpoint yet. Pass --overwrite to "
                "start over, or choose another output_dir (--output-dir DIR)."
            )
        raise UserError(
            f"output_dir {where} holds an unfinished run. Continue it with --resume, or pass --overwrite to start over."
        )

    def claim(self, *, resume: bool, overwrite: bool, main: bool = True) -> None:
        """Take the folder's lock (main process only), then check it under the lock, so two commands started
        together cannot both pass the check. Held until release() or the end of the process."""
        if not main:
            self.check_writable(resume=resume, overwrite=overwrite)
            return
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        locks.acquire(self.lock_file, f"run folder {self.path}")
        try:
            self.check_writable(resume=resume, overwrite=overwrite)
        except UserError:
            self.release()
            if created:
                self.path.rmdir()  # "nothing was written": not even the folder made for the lock
            raise

    def release(self) -> None:
        locks.release(self.lock_file)

    def start(self, *, resume: bool, overwrite: bool) -> None:
        if overwrite and not resume and self.recipe_file.is_file():
            for entry in self.path.iterdir():  # all but the lock this process holds
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                elif entry.name != self.lock_file.name:
                    entry.unlink()
        self.path.mkdir(parents=True, exist_ok=True)

    def save_adapter(self, trainer) -> None:
        """Save through the trainer (it gathers sharded weights), then move into place on the main process."""
        staging = self.path / "adapter.partial"
        trainer.save_model(str(staging))
        if trainer.is_world_process_zero():
            # The run's adapter is the trained "default" one; PEFT saves any other adapter a trainer added for
            # itself (DPO's frozen reference copy) in a subfolder, which is not part of the result.
            for extra in staging.glob("*/adapter_config.json"):
                shutil.rmtree(extra.parent)
            shutil.rmtree(self.adapter, ignore_errors=True)
            staging.rename(self.adapter)

    def write_metrics(self, metrics: dict) -> None:
        staging = self.path / "metrics.json.partial"
        staging.write_text(json.dumps(metrics, indent=2, default=str) + "\n", encoding="utf-8")
        staging.rename(self.metrics_file)

    def read_metrics(self) -> dict:
        return json.loads(self.metrics_file.read_text(encoding="utf-8"))


@contextlib.contextmanager
def write_errors_reported(run: RunFolder, resume_command: str):
    """A save that fails for lack of room or permission becomes a UserError naming the path, and saying that the
    last complete checkpoint is still the one --resume continues from."""
    try:
        yield
    except Exception as err:
        why = failed_write(err)
        if why is None:
            raise
        path, reason = why
        latest = run.latest_checkpoint()
        path = path or newest_incomplete(run) or run.path
        kept = (
            f"The last complete checkpoint, {latest}, is intact: make room (or fix the permissions), then continue "
            f"with `{resume_command}`."
            if latest
            else "No checkpoint was complete yet: make room (or fix the permissions) and start the run again."
        )
        raise UserError(f"could not write {path}: {reason}. {kept}") from None


# How libraries word a failed write when they do not raise an OSError: torch.save's zip writer (RuntimeError
# "[enforce fail at inline_container.cc] ... file write failed" or "unexpected pos"), safetensors ("os error 28").
WRITE_FAILURE_WORDS = ("inline_container.cc", "write failed", "No space left", "os error 28", "StorageFull")


def failed_write(err: BaseException) -> tuple[str | None, str] | None:
    """(the path, if known; why) when `err`, or an error it came from, is a failed write; else None."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in WRITE_ERRNOS:
            return seen.filename, seen.strerror or "write failed"
        if any(words in str(seen) for words in WRITE_FAILURE_WORDS):
            return None, "the write failed (is the disk full?)"
        seen = seen.__cause__ or seen.__context__
    return None


def newest_incomplete(run: RunFolder) -> Path | None:
    latest = run.latest_checkpoint()
    after = [p for p in run.checkpoint_folders() if latest is None or step_of(p) > step_of(latest)]
    return after[-1] if after else None


def write_jsonl(path: Path, rows: list[dict]) -> None:
    """Write all rows, then move into place: a file that exists is complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".partial")
    staging.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    staging.rename(path)
