"""The `posttrain` command: one typer app assembled from the command groups below. Heavy libraries are imported
inside commands so `posttrain --help` is instant.

    train.py   sft, reward, dpo, orpo, ppo, rs (one per method of posttrain.methods) and quickstart
    info.py    recipes, plan, env, data inspect: looking before training
    use.py     chat, generate, merge, serve: using what was trained
    evaluate.py  eval accuracy, winrate, perplexity, gatt: one JSON report per call
    support.py what they share (user errors as exit 2, quiet libraries, recipe arguments)

Exit status: 0 success; 2 a user error (bad recipe, data, path, hardware request, overflowed weights, an output
another command is writing, a save that failed for lack of room or permission); 3 stopped on SIGTERM or Ctrl-C
with a checkpoint to resume from; 1 an unexpected failure.
"""

from __future__ import annotations

from typing import Annotated

import typer

from posttrain.cli.evaluate import eval_app
from posttrain.cli.info import info_app
from posttrain.cli.support import silence_kernels_notice
from posttrain.cli.train import train_app
from posttrain.cli.use import use_app

app = typer.Typer(
    help="Post-train Llama-2-family models on one small GPU: SFT, reward, PPO, rejection sampling, DPO, ORPO, KTO, "
    "GRPO, Ghost Attention, safety context distillation.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def show_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        typer.echo(f"posttrain {version('posttrain')}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print posttrain's version and exit.", callback=show_version, is_eager=True),
    ] = False,
) -> None:
    silence_kernels_notice()  # before any command imports bitsandbytes


# The groups' commands sit at the top level, listed in this order.
for group in (train_app, info_app, use_app):
    app.add_typer(group)
app.add_typer(eval_app, name="eval")
