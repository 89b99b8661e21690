"""The commands that use what was trained: chat, generate, merge and serve (eval is cli/evaluate.py).

Registered at the top level of `posttrain` by cli.py. Heavy libraries are imported inside commands.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from posttrain.cli.support import quiet_libraries, reports_user_errors

use_app = typer.Typer()

ModelArg = Annotated[str, typer.Argument(help="Hub id, local or merged folder, alias, or run folder.")]
ChatTemplate = Annotated[
    str, typer.Option(help="auto (the model's own, else llama2) | llama2 | chatml | path.jinja; a run keeps its own.")
]
MaxNewTokens = Annotated[int, typer.Option(help="Most tokens per reply.")]
DoSample = Annotated[bool, typer.Option("--do-sample/--greedy", help="Sample, or always take the likeliest token.")]
Temperature = Annotated[float, typer.Option(help="Sampling temperature (with --do-sample).")]
TopK = Annotated[int, typer.Option(help="Sample from the k likeliest tokens; 0: no limit (with --do-sample).")]
TopP = Annotated[float, typer.Option(help="Sample from the likeliest tokens holding this mass (with --do-sample).")]
RepetitionPenalty = Annotated[float, typer.Option(help="Above 1.0 discourages repeating tokens; 1.0: none.")]
BatchSize = Annotated[int, typer.Option(help="Prompts generated together.")]
Seed = Annotated[int, typer.Option(help="Seed for sampling.")]


def generation_settings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty):
    from posttrain.inference.generation import GenerationSettings

    return GenerationSettings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty)


@use_app.command()
@reports_user_errors
def chat(
    model: ModelArg,
    system: Annotated[str | None, typer.Option(help="System prompt (change it in the chat with /system TEXT).")] = None,
    chat_template: ChatTemplate = "auto",
    max_new_tokens: MaxNewTokens = 512,
    do_sample: DoSample = True,
    temperature: Temperature = 0.7,
    top_k: TopK = 50,
    top_p: TopP = 0.9,
    repetition_penalty: RepetitionPenalty = 1.0,
    tools: Annotated[
        Path | None, typer.Option(help="JSON file: a list of tool (function) schemas the model may call.")
    ] = None,
):
    """Chat in the terminal: streamed replies, the history kept in the model's chat template.

    In the chat: /reset clears the history, /system TEXT sets the system prompt, /tool TEXT answers a tool call with
    its result, /exit leaves; Ctrl-C stops a reply. A reply that calls a tool is shown as `[tool call] name({...})`.
    """
    from posttrain.data.tool_calls import read_tools
    from posttrain.inference.chat import run_chat

    settings = generation_settings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty)
    offered = read_tools(tools) if tools else None
    quiet_libraries()
    write = functools.partial(typer.echo, nl=False)
    run_chat(model, system, settings, chat_template, read=input, write=write, tools=offered)


@use_app.command()
@reports_user_errors
def generate(
    model: ModelArg,
    prompts: Annotated[str, typer.Option(help="Prompt file in any data format (prompt part taken), or builtin:NAME.")],
    output: Annotated[Path, typer.Option(help="JSONL to write; rows already there are skipped (resume).")],
    chat_template: ChatTemplate = "auto",
    batch_size: BatchSize = 8,
    max_new_tokens: MaxNewTokens = 256,
    do_sample: DoSample = False,
    temperature: Temperature = 0.7,
    top_k: TopK = 50,
    top_p: TopP = 1.0,
    repetition_penalty: RepetitionPenalty = 1.0,
    seed: Seed = 0,
):
    """Answer every prompt of a file (batched, left padding) into JSONL rows: prompt, response, model, settings."""
    from posttrain.inference.generate import generate_file

    settings = generation_settings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty)
    quiet_libraries()
    options = {"batch_size": batch_size, "seed": seed, "chat_template": chat_template, "echo": typer.echo}
    written = generate_file(model, prompts, output, settings, **options)
    typer.echo(f"done: {written} new rows in {output}")


@use_app.command()
@reports_user_errors
def merge(
    run: Annotated[str, typer.Argument(help="Run folder whose adapter to merge (any run but a reward run).")],
    output: Annotated[Path, typer.Option(help="New (or empty) folder for the merged model.")],
    dtype: Annotated[str, typer.Option(help="auto (the base's own: fp16 for Llama 2) | fp16 | bf16 | fp32.")] = "auto",
):
    """Merge a run's adapter into 16-bit base weights: a plain transformers folder, checked against the adapter."""
    from posttrain.inference.merge import merge_run

    quiet_libraries()
    merge_run(run, output, dtype, echo=typer.echo)


@use_app.command()
@reports_user_errors
def serve(
    model: Annotated[
        list[str],
        typer.Argument(
            help="The model to chat with (hub id, local or merged folder, alias, or run folder); with --arena, two "
            "or more.",
            show_default=False,
        ),
    ],
    arena: Annotated[
        bool,
        typer.Option(
            "--arena",
            help="Serve the arena page instead: two of the MODELs, drawn at random, answer each prompt anonymously "
            "side by side, and you vote. Every MODEL is loaded once at start and stays loaded: their memory adds up.",
        ),
    ] = False,
    votes: Annotated[
        Path | None,
        typer.Option(
            help="With --arena: the JSONL file each vote is appended to (never overwritten) "
            "\\[default: evals/arena-votes.jsonl].",
            show_default=False,
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Address to bind; any other than loopback (e.g. 0.0.0.0, your network) needs --auth.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the page.")] = 7860,
    auth: Annotated[
        str | None,
        typer.Option(
            metavar="USER:PASSWORD",
            envvar="POSTTRAIN_SERVE_AUTH",
            help="Login the page asks for; required with a --host other than loopback. The environment variable "
            "keeps the password out of your shell history.",
            show_default=False,
        ),
    ] = None,
    system: Annotated[
        str, typer.Option(help="System prompt: the chat page's starting one, the arena's fixed one.")
    ] = "",
    chat_template: ChatTemplate = "auto",
    max_new_tokens: MaxNewTokens = 512,
    temperature: Annotated[
        float, typer.Option(help="Temperature: the chat page's starting one, the arena's fixed one; 0: greedy.")
    ] = 0.7,
    top_p: Annotated[
        float, typer.Option(help="Sample from the likeliest tokens holding this mass (unless greedy).")
    ] = 0.9,
):
    r"""A local web chat page (streamed replies, history, system prompt, sampling controls), or with --arena a page
    of blind side-by-side votes between models.

    Needs gradio, the `serve` extra of posttrain (pip install -e ".\[serve]" in a checkout).
    """
    from posttrain.inference.serve import page_address

    check_served_models(model, arena, votes)
    address = page_address(host, port, auth)
    sampled = temperature > 0
    settings = generation_settings(max_new_tokens, sampled, temperature if sampled else 0.7, 50, top_p, 1.0)
    quiet_libraries()
    if arena:
        from posttrain.inference.arena_page import serve_arena

        serve_arena(model, address, system, settings, chat_template, votes or DEFAULT_VOTES)
    else:
        from posttrain.inference.serve import serve as serve_page

        serve_page(model[0], address, system, settings, chat_template)


DEFAULT_VOTES = Path("evals/arena-votes.jsonl")


def check_served_models(models: list[str], arena: bool, votes: Path | None) -> None:
    """One MODEL for the chat page; two or more, each named once, for the arena."""
    from posttrain.errors import UserError

    if not arena and len(models) > 1:
        raise UserError(
            f"serve takes one MODEL for the chat page, not {len(models)}; add --arena to compare them side by side."
        )
    if not arena and votes is not None:
        raise UserError("--votes is where the arena's votes go: add --arena (and two or more MODELs), or drop it.")
    if arena and len(models) < 2:
        raise UserError("--arena compares two or more MODELs; name another one, or drop --arena for a chat page.")
    repeated = sorted({name for name in models if models.count(name) > 1})
    if repeated:
        raise UserError(f"--arena: {', '.join(repeated)} is named more than once; name each MODEL once.")
