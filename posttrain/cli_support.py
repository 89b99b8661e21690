"""What every posttrain command shares: user errors as exit 2, and quiet libraries."""

from __future__ import annotations

import functools

import typer

from posttrain.errors import UserError


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


def quiet_libraries() -> None:
    """Keep the libraries' own chatter (progress bars of data mapping, advisory warnings) off the terminal."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    # TRL 1.16 still sets transformers' deprecated `gradient_checkpointing` default; the rename is not ours to act on.
    warnings.filterwarnings("ignore", category=FutureWarning)
