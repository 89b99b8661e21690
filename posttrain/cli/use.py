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
):
    """Chat in the terminal: streamed replies, the history kept in the model's chat template.

    In the chat: /reset clears the history, /system TEXT sets the system prompt, /exit leaves; Ctrl-C stops a reply.
    """
    from posttrain.inference.chat import run_chat

    settings = generation_settings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty)
    quiet_libraries()
    run_chat(model, system, settings, chat_template, read=input, write=functools.partial(typer.echo, nl=False))


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
    model: ModelArg,
    host: Annotated[str, typer.Option(help="Address to bind; 0.0.0.0 opens the page to your network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port of the page.")] = 7860,
    system: Annotated[str, typer.Option(help="Starting system prompt (editable on the page).")] = "",
    chat_template: ChatTemplate = "auto",
    max_new_tokens: MaxNewTokens = 512,
    temperature: Annotated[float, typer.Option(help="Starting temperature; 0: greedy.")] = 0.7,
    top_p: TopP = 0.9,
):
    r"""A local web chat page: streamed replies, history, system prompt, sampling controls, clear button.

    Needs gradio, the `serve` extra of posttrain (pip install -e ".\[serve]" in a checkout).
    """
    from posttrain.inference.serve import serve as serve_page

    sampled = temperature > 0
    settings = generation_settings(max_new_tokens, sampled, temperature if sampled else 0.7, 50, top_p, 1.0)
    quiet_libraries()
    serve_page(model, host, port, system, settings, chat_template)
