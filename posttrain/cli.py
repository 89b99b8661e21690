"""The `posttrain` command. Heavy libraries are imported inside commands so `posttrain --help` is instant.

Exit status: 0 success; 2 a user error (bad recipe, data, path, hardware request); 1 an unexpected failure.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer

from posttrain.errors import UserError

app = typer.Typer(
    help="Post-train Llama-2-family models on one small GPU: SFT, reward, PPO, rejection sampling, DPO, ORPO.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Look at a data file before training on it.", no_args_is_help=True)
app.add_typer(data_app, name="data")

Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key: section.key=value (repeatable)."),
]
OutputDir = Annotated[Path | None, typer.Option(help="Run folder to write (overrides output_dir).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a run already in output_dir.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Check recipe and data, print the plan, load no weights.")]


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


def load_method_recipe(recipe: str, method: str, overrides: list[str] | None, output_dir: Path | None):
    from posttrain.recipe import load_recipe

    extra = [f"output_dir={output_dir}"] if output_dir else []
    return load_recipe(recipe, (overrides or []) + extra, method=method)


TRAINING_COMMANDS = {
    "sft": "Supervised fine-tuning (instruction tuning) with QLoRA.",
    "reward": "Train a reward model on binary comparisons (Llama 2 / InstructGPT step 2).",
    "dpo": "Direct preference optimisation, usually on top of an SFT run.",
    "orpo": "ORPO: instruction tuning and preference alignment in one stage, from a base model.",
    "ppo": "RLHF with PPO: policy, reference, value and reward adapters on one 4-bit base.",
    "rs": "Rejection-sampling fine-tuning (Llama 2): sample K answers, keep the reward run's best, SFT on them.",
}
RecipeArg = Annotated[str, typer.Argument(help="YAML path or shipped recipe name (see `posttrain recipes`).")]


def train(method: str, recipe: str, overrides, output_dir, resume: bool, overwrite: bool, dry_run: bool) -> None:
    import importlib

    from posttrain.methods.common import run_method

    loaded = load_method_recipe(recipe, method, overrides, output_dir)
    quiet_libraries()
    module = importlib.import_module(f"posttrain.methods.{method}")
    options = {"resume": resume, "overwrite": overwrite, "dry_run": dry_run, "echo": typer.echo}
    # ppo is posttrain's own trainer; the TRL-backed methods share run_method
    metrics = module.run(loaded, **options) if hasattr(module, "run") else run_method(module, loaded, **options)
    if metrics is not None:
        typer.echo(f"done: run folder {loaded.output_dir} ({outcome(metrics)})")


def outcome(metrics: dict) -> str:
    """A run's result in one line: the loss of TRL methods, the score of ppo and rs."""
    if "rounds" in metrics:  # rs
        first, last = metrics["rounds"][0], metrics["rounds"][-1]
        return (
            f"mean score of the policy's samples {first['mean_score']:.3f} in round 1, {last['mean_score']:.3f} "
            f"in round {last['round']}; the kept answers of the last round scored {last['best_score']:.3f}"
        )
    if "first" in metrics:  # ppo
        first, final = metrics["first"], metrics["final"]
        return (
            f"mean score {first['score']:.3f} over the first steps, {final['score']:.3f} over the last; "
            f"KL to the reference {final['kl']:.3f}"
        )
    line = f"train loss {metrics['train'].get('train_loss', 0):.4f}"
    if "reward_accuracy" in metrics:
        accuracy = metrics["reward_accuracy"]
        line += f"; eval accuracy {accuracy['accuracy']:.3f} on {accuracy['pairs']} held-out pairs"
    return line


def add_training_command(method: str, help_text: str) -> None:
    @app.command(name=method, help=help_text)
    @reports_user_errors
    def command(
        recipe: RecipeArg,
        overrides: Overrides = None,
        output_dir: OutputDir = None,
        resume: Resume = False,
        overwrite: Overwrite = False,
        dry_run: DryRun = False,
    ):
        train(method, recipe, overrides, output_dir, resume, overwrite, dry_run)


for _method, _help_text in TRAINING_COMMANDS.items():
    add_training_command(_method, _help_text)


@app.command()
@reports_user_errors
def quickstart(
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Run folder to write (default: runs/quickstart, or -2, -3 ... if taken)."),
    ] = None,
    max_steps: Annotated[int, typer.Option(help="Training steps.")] = 60,
):
    """Fine-tune smollm2-135m into a pirate on CPU or GPU, showing its answers before and after."""
    from posttrain.quickstart import free_run_folder, run_quickstart

    quiet_libraries()
    run_quickstart(output_dir or free_run_folder(Path("runs/quickstart")), max_steps=max_steps, echo=typer.echo)


@app.command()
def recipes(
    keys: Annotated[bool, typer.Option("--keys", help="Also list every recipe key with its default.")] = False,
):
    """List the shipped recipes (run one by name: `posttrain sft smollm2-135m/sft`)."""
    from posttrain.recipe import METHOD_SECTIONS, SECTIONS, field_help, read_yaml, shipped_recipes

    for name, path in shipped_recipes().items():
        command = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
        method = read_yaml(path).get("method", "?")
        typer.echo(f"{name:<28} {method:<7} {command}")
    if keys:
        method_sections = {name: cls for sections in METHOD_SECTIONS.values() for name, cls in sections.items()}
        for section, cls in (SECTIONS | method_sections).items():
            only = f" ({section} recipes only)" if section in method_sections else ""
            typer.echo(f"\n{section}:{only}")
            for key, default, text in field_help(cls):
                typer.echo(f"  {key:<19} {default!s:<12} {text}")
        typer.echo("\ntrain:\n  any field of the method's TRL config (SFTConfig, DPOConfig, ...)")


@app.command()
def env():
    """Library versions, hardware, and the precision posttrain would choose."""
    from posttrain.precision import choose_precision, detect_hardware
    from posttrain.runs import library_versions

    for name, found in library_versions().items():
        typer.echo(f"{name:<14} {found}")
    hardware = detect_hardware()
    capability = (
        f" (compute capability {hardware.capability[0]}.{hardware.capability[1]})" if hardware.capability else ""
    )
    typer.echo(f"{'hardware':<14} {hardware.name}{capability}")
    typer.echo(f"{'precision':<14} {choose_precision('auto', hardware)} (model.precision: auto)")
    typer.echo(f"{'4-bit':<14} bitsandbytes on {hardware.device}")


@data_app.command("inspect")
@reports_user_errors
def data_inspect(
    file: Annotated[str, typer.Argument(help="Data file, hub dataset id or builtin:NAME.")],
    model: Annotated[str, typer.Option(help="Model whose tokenizer counts the tokens.")] = "smollm2-135m",
    chat_template: Annotated[str, typer.Option(help="llama2 | chatml | model | path.jinja")] = "chatml",
    data_format: Annotated[str, typer.Option("--format", help="auto, or a format name.")] = "auto",
    max_length: Annotated[int, typer.Option(help="Length limit to report against.")] = 1024,
):
    """Detected format (SFT or preference), row count and token-length histogram of a data file."""
    from posttrain.data.prepare import LengthReport, is_preference, load_examples, measure, preference_length_lines
    from posttrain.models.loading import load_tokenizer, resolve_model

    quiet_libraries()
    fmt, rows, examples = load_examples(file, data_format, preference=None)
    preference = is_preference(rows)
    tokenizer = load_tokenizer(resolve_model(model), chat_template)
    lengths = measure(tokenizer, rows, examples)
    kind = "preference pairs" if preference else "rows"
    typer.echo(f"{file}: format {fmt}, {len(rows)} {kind} (tokens counted with {model}, {chat_template} template)")
    if preference:
        for line in preference_length_lines(tokenizer, examples):
            typer.echo(line)
        labels = sorted({e["strength"] for e in examples if "strength" in e})
        if labels:
            typer.echo(f"strength labels: {', '.join(labels)}")
    report = LengthReport(lengths, max_length, "drop", sum(n > max_length for n in lengths))
    for line in report.lines():
        typer.echo(line.replace("dropped", "would be dropped by data.on_too_long: drop"))


# ---------------------------------------------------------------- using what was trained

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
ReportPath = Annotated[
    Path | None, typer.Option("--output", help="Report file (default: a new evals/MODE-DATE-TIME.json).")
]


def generation_settings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty):
    from posttrain.generation import GenerationSettings

    return GenerationSettings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty)


@app.command()
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
    from posttrain.chat import run_chat

    settings = generation_settings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty)
    quiet_libraries()
    run_chat(model, system, settings, chat_template, read=input, write=functools.partial(typer.echo, nl=False))


@app.command()
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
    from posttrain.generate import generate_file

    settings = generation_settings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty)
    quiet_libraries()
    options = {"batch_size": batch_size, "seed": seed, "chat_template": chat_template, "echo": typer.echo}
    written = generate_file(model, prompts, output, settings, **options)
    typer.echo(f"done: {written} new rows in {output}")


@app.command()
@reports_user_errors
def merge(
    run: Annotated[str, typer.Argument(help="Run folder whose adapter to merge (any run but a reward run).")],
    output: Annotated[Path, typer.Option(help="New (or empty) folder for the merged model.")],
    dtype: Annotated[str, typer.Option(help="auto (the base's own: fp16 for Llama 2) | fp16 | bf16 | fp32.")] = "auto",
):
    """Merge a run's adapter into 16-bit base weights: a plain transformers folder, checked against the adapter."""
    from posttrain.merge import merge_run

    quiet_libraries()
    merge_run(run, output, dtype, echo=typer.echo)


eval_app = typer.Typer(help="Evaluate: reward accuracy, win-rate, perplexity. One JSON report per call.")
app.add_typer(eval_app, name="eval", no_args_is_help=True)


def finish_report(path: Path, report: dict, rows: list[tuple[str, str]]) -> None:
    from posttrain.evaluation.report import table, write_report

    write_report(path, report)
    for line in table(rows):
        typer.echo(line)
    typer.echo(f"report: {path}")


@eval_app.command("accuracy")
@reports_user_errors
def eval_accuracy(
    reward_run: Annotated[str, typer.Argument(help="Run folder of `posttrain reward`.")],
    data: Annotated[str, typer.Option(help="Preference file in any preference format, or builtin:NAME.")],
    data_format: Annotated[str, typer.Option("--format", help="auto, or a preference format name.")] = "auto",
    batch_size: BatchSize = 8,
    output: ReportPath = None,
):
    """Share of pairs whose chosen reply the reward run scores above the rejected one (per strength label too)."""
    from posttrain.evaluation.accuracy import accuracy_rows, reward_accuracy
    from posttrain.evaluation.report import report_path

    path = report_path("accuracy", output)
    quiet_libraries()
    report = reward_accuracy(reward_run, data, data_format, batch_size)
    finish_report(path, report, accuracy_rows(report))


@eval_app.command("winrate")
@reports_user_errors
def eval_winrate(
    model_a: ModelArg,
    model_b: ModelArg,
    prompts: Annotated[str, typer.Option(help="Prompt file in any data format (prompt part taken), or builtin:NAME.")],
    judge: Annotated[str, typer.Option(help="Reward run that scores both replies (same tokenizer as A and B).")],
    chat_template: ChatTemplate = "auto",
    batch_size: BatchSize = 8,
    max_new_tokens: MaxNewTokens = 256,
    do_sample: DoSample = False,
    temperature: Temperature = 0.7,
    top_k: TopK = 50,
    top_p: TopP = 1.0,
    repetition_penalty: RepetitionPenalty = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of A's sampling (B uses seed + 1) and of the bootstrap.")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% interval.")] = 1000,
    tie_margin: Annotated[float, typer.Option(help="Score difference up to which a pair is a tie.")] = 0.0,
    output: ReportPath = None,
):
    """Win-rate of model A over model B on a prompt file, judged by a reward run (ties half), with a bootstrap CI."""
    from posttrain.evaluation.report import report_path
    from posttrain.evaluation.winrate import win_rate, winrate_rows

    path = report_path("winrate", output)
    settings = generation_settings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty)
    quiet_libraries()
    options = {"seed": seed, "resamples": bootstrap, "tie_margin": tie_margin, "batch_size": batch_size}
    options |= {"chat_template": chat_template, "echo": typer.echo}
    report = win_rate(model_a, model_b, prompts, judge, settings, **options)
    finish_report(path, report, winrate_rows(report))


@eval_app.command("perplexity")
@reports_user_errors
def eval_perplexity(
    model: ModelArg,
    data: Annotated[str, typer.Option(help="Text file (one text), or a data file or builtin:NAME (one text per row).")],
    window: Annotated[int, typer.Option(help="Tokens per forward pass (capped at the model's context).")] = 1024,
    stride: Annotated[int | None, typer.Option(help="Tokens between windows (default: half the window).")] = None,
    chat_template: ChatTemplate = "auto",
    output: ReportPath = None,
):
    """Perplexity of a model on a text: exp(mean negative log-likelihood per token), sliding windows."""
    from posttrain.evaluation.perplexity import perplexity, perplexity_rows
    from posttrain.evaluation.report import report_path

    path = report_path("perplexity", output)
    quiet_libraries()
    report = perplexity(model, data, window, stride, chat_template)
    finish_report(path, report, perplexity_rows(report))


@app.command()
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
    from posttrain.serve import serve as serve_page

    sampled = temperature > 0
    settings = generation_settings(max_new_tokens, sampled, temperature if sampled else 0.7, 50, top_p, 1.0)
    quiet_libraries()
    serve_page(model, host, port, system, settings, chat_template)
