"""What every posttrain command shares: user errors as exit 2, quiet libraries, and the recipe arguments."""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Annotated

import typer

from posttrain.errors import UserError

RecipeArg = Annotated[str, typer.Argument(help="YAML path or shipped recipe name (see `posttrain recipes`).")]
Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key: section.key=value (repeatable)."),
]


def reports_user_errors(command):
    """Print a UserError in plain words and exit 2, without a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(code=2) from None

    return wrapper


# bitsandbytes logs this when it is imported on a CPU with AVX512-bf16 and the optional `kernels` package is missing.
# The kernel serves the repacked 4-bit layout of CPU inference, which posttrain switches off (models/loading.py,
# keep_4bit_layout_on_cpu), so on a CPU the line is noise on every command.
KERNELS_NOTICE = ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward")


def without_kernels_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(KERNELS_NOTICE[1])


def silence_kernels_notice() -> None:
    """Drop bitsandbytes' `kernels` notice (its logger exists from here on, so this works before the import)."""
    logger = logging.getLogger(KERNELS_NOTICE[0])
    if without_kernels_notice not in logger.filters:
        logger.addFilter(without_kernels_notice)


def quiet_libraries() -> None:
    """Keep the libraries' own chatter (progress bars of data mapping, advisory warnings) off the terminal."""
    import warnings

    silence_kernels_notice()

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    # TRL 1.16 still calls transformers' deprecated is_gradient_checkpointing; the rename is TRL's to make.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@contextlib.contextmanager
def training_guards(run_folder: str | Path, resume_command: str):
    """Around a training command: SIGTERM or a first Ctrl-C stop it with a checkpoint (exit 3, saying how to
    resume), and a save that fails for lack of room or permission is a plain error naming the path (exit 2)."""
    from posttrain.runs import RunFolder, stopping, write_errors_reported

    try:
        with stopping.stop_signals_caught(), write_errors_reported(RunFolder(run_folder), resume_command):
            yield
    except stopping.Stopped as stopped:
        typer.echo(f"{stopped}\ncontinue with: {resume_command}", err=True)
        raise typer.Exit(code=stopping.STOPPED_EXIT) from None
