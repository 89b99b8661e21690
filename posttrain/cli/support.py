"""What every posttrain command shares: user errors as exit 2, quiet libraries, and the recipe arguments."""

from __future__ import annotations

import functools
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


def quiet_libraries() -> None:
    """Keep the libraries' own chatter (progress bars of data mapping, advisory warnings) off the terminal."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    # TRL 1.16 still calls transformers' deprecated is_gradient_checkpointing; the rename is TRL's to make.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
