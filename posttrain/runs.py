"""The run folder every stage writes.

A run is finished once metrics.json exists; it is written last. The adapter is saved beside its final place and
renamed into it, so a crash never leaves a half-written adapter that looks complete.
"""

from __future__ import annotations

import json
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from posttrain.errors import UserError

LIBRARIES = ("posttrain", "torch", "transformers", "trl", "peft", "bitsandbytes", "datasets", "accelerate")


def library_versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


class RunFolder:
    def __init__(self, path: str | Path, checkpoint_pattern: str = "checkpoint-*"):
        self.path = Path(path).expanduser()
        self.checkpoint_pattern = checkpoint_pattern  # NAME-NUMBER folders under checkpoints/

    adapter = property(lambda self: self.path / "adapter")
    checkpoints = property(lambda self: self.path / "checkpoints")
    logs = property(lambda self: self.path / "logs")
    metrics_file = property(lambda self: self.path / "metrics.json")
    recipe_file = property(lambda self: self.path / "recipe.yaml")

    @property
    def finished(self) -> bool:
        return self.metrics_file.is_file()

    def latest_checkpoint(self) -> Path | None:
        steps = sorted(self.checkpoints.glob(self.checkpoint_pattern), key=lambda p: int(p.name.rpartition("-")[2]))
        return steps[-1] if steps else None

    def check_writable(self, *, resume: bool, overwrite: bool) -> None:
        """Refuse, before anything is written, to clobber a finished run or a folder that is not a run."""
        where = self.path
        exists = where.is_dir() and any(where.iterdir())
        is_run = self.recipe_file.is_file()
        if resume:
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
                f"output_dir {where} holds an unfinished run with no checkpoint yet. Pass --overwrite to start "
                "over, or choose another output_dir (--output-dir DIR)."
            )
        raise UserError(
            f"output_dir {where} holds an unfinished run. Continue it with --resume, or pass --overwrite to start over."
        )

    def start(self, *, resume: bool, overwrite: bool) -> None:
        if overwrite and not resume and self.recipe_file.is_file():
            shutil.rmtree(self.path)
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
