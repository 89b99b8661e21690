"""`posttrain eval`: the evaluation commands, one JSON report per call (posttrain.evaluation does the work).

Registered at the top level of `posttrain` by cli/__init__.py. Heavy libraries are imported inside commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from posttrain.cli.support import quiet_libraries, reports_user_errors
from posttrain.cli.use import (
    BatchSize,
    ChatTemplate,
    DoSample,
    MaxNewTokens,
    ModelArg,
    RepetitionPenalty,
    Seed,
    Temperature,
    TopK,
    TopP,
    generation_settings,
)
from posttrain.errors import UserError

ReportPath = Annotated[
    Path | None, typer.Option("--output", help="Report file (default: a new evals/MODE-DATE-TIME.json).")
]
Truncated = Annotated[
    str,
    typer.Option(
        help="A reply cut off at --max-new-tokens: fixed_score gets --truncated-score (the reward model never saw such "
        "an ending); append_eos is judged with its turn closed. As ppo.truncated and rs.truncated."
    ),
]
TruncatedScore = Annotated[float, typer.Option(help="Score of a cut-off reply (--truncated fixed_score).")]


def score_of_cut_off(truncated: str, truncated_score: float) -> float | None:
    """What a judge gives a cut-off reply: the fixed score, or None (judged with its turn closed)."""
    if truncated not in ("fixed_score", "append_eos"):
        raise UserError(f"--truncated {truncated} is not a choice: use fixed_score or append_eos.")
    return truncated_score if truncated == "fixed_score" else None


eval_app = typer.Typer(
    help="Evaluate: reward accuracy, win-rate, arena leaderboard, perplexity, instruction keeping (gatt), lm-eval "
    "benchmarks (harness), toxicity and sentiment of replies (safety). One JSON report per call.",
    no_args_is_help=True,
)


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
    truncated: Truncated = "fixed_score",
    truncated_score: TruncatedScore = -10.0,
    output: ReportPath = None,
):
    """Win-rate of model A over model B on a prompt file, judged by a reward run (ties half), with a bootstrap CI."""
    from posttrain.evaluation.report import report_path
    from posttrain.evaluation.winrate import win_rate, winrate_rows

    cut_off = score_of_cut_off(truncated, truncated_score)
    path = report_path("winrate", output)
    settings = generation_settings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty)
    quiet_libraries()
    options = {"seed": seed, "resamples": bootstrap, "tie_margin": tie_margin, "batch_size": batch_size}
    options["truncated_score"] = cut_off
    options |= {"chat_template": chat_template, "echo": typer.echo}
    report = win_rate(model_a, model_b, prompts, judge, settings, **options)
    finish_report(path, report, winrate_rows(report))


@eval_app.command("arena")
@reports_user_errors
def eval_arena(
    models: Annotated[
        list[str] | None,
        typer.Argument(help="Two or more models (hub id, folder, alias or run folder); none with --votes alone."),
    ] = None,
    prompts: Annotated[
        str | None, typer.Option(help="Prompts every model answers: any data format (prompt part taken), builtin:NAME.")
    ] = None,
    judge: Annotated[
        list[str] | None,
        typer.Option(help="Reward run that scores every answer (the models' tokenizer); repeatable, one board each."),
    ] = None,
    votes: Annotated[
        list[Path] | None,
        typer.Option(
            help="Votes JSONL of `posttrain serve --arena`; repeatable; a board per voting judge (human). Each "
            "round's vote counts once (repeats dropped and counted); votes per voter reported."
        ),
    ] = None,
    answers: Annotated[
        Path, typer.Option(help="Folder caching each model's answers per settings; a rerun reuses and resumes them.")
    ] = Path("evals/arena-answers"),
    chat_template: ChatTemplate = "auto",
    batch_size: BatchSize = 8,
    max_new_tokens: MaxNewTokens = 256,
    do_sample: DoSample = False,
    temperature: Temperature = 0.7,
    top_k: TopK = 50,
    top_p: TopP = 1.0,
    repetition_penalty: RepetitionPenalty = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the models' sampling and of the bootstrap.")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples of the battles for the 95% intervals.")] = 1000,
    tie_margin: Annotated[float, typer.Option(help="Judge score difference up to which a battle is a tie.")] = 0.0,
    truncated: Truncated = "fixed_score",
    truncated_score: TruncatedScore = -10.0,
    output: ReportPath = None,
):
    """Chatbot-Arena leaderboard of many models: Bradley-Terry scores (Elo scale, mean 1000) with 95% intervals,
    one board per reward-run judge and one from human votes; a PNG beside the report."""
    from posttrain.evaluation.arena import arena, leaderboard_lines
    from posttrain.evaluation.arena_plot import plot
    from posttrain.evaluation.report import report_path, write_report

    cut_off = score_of_cut_off(truncated, truncated_score)
    path = report_path("arena", output)
    settings = generation_settings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty)
    quiet_libraries()
    options = {"answers_dir": answers, "seed": seed, "resamples": bootstrap, "tie_margin": tie_margin}
    options["truncated_score"] = cut_off
    options |= {"chat_template": chat_template, "batch_size": batch_size, "echo": typer.echo}
    report = arena(models or [], prompts, judge or [], votes or [], settings, **options)
    write_report(path, report)
    for board in report["leaderboards"]:
        for line in leaderboard_lines(board):
            typer.echo(line)
    picture = path.with_suffix(".png")
    typer.echo(f"plot: {picture}" if plot(report, picture) else "plot: skipped (matplotlib is not installed)")
    typer.echo(f"report: {path}")


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


@eval_app.command("gatt")
@reports_user_errors
def eval_gatt(
    model: ModelArg,
    prompts: Annotated[
        str, typer.Option(help="Dialogues (user turns in order) in any data format, or builtin:NAME.")
    ] = "builtin:gatt_dialogues",
    turns: Annotated[int, typer.Option(help="Turns per dialogue (padded with generic follow-up questions).")] = 4,
    dialogues: Annotated[int, typer.Option(help="Dialogues played per instruction.")] = 8,
    instruction_in: Annotated[str, typer.Option(help="Where the instruction sits: system | first_user.")] = "system",
    chat_template: ChatTemplate = "auto",
    batch_size: BatchSize = 8,
    max_new_tokens: MaxNewTokens = 64,
    do_sample: DoSample = False,
    temperature: Temperature = 0.7,
    top_k: TopK = 50,
    top_p: TopP = 1.0,
    repetition_penalty: RepetitionPenalty = 1.0,
    seed: Seed = 0,
    output: ReportPath = None,
):
    """Share of replies per turn that still follow a checkable first-turn instruction (Ghost Attention's target)."""
    from posttrain.evaluation.gatt import gatt_eval, gatt_rows, plot
    from posttrain.evaluation.report import report_path

    path = report_path("gatt", output)
    settings = generation_settings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty)
    quiet_libraries()
    options = {"batch_size": batch_size, "seed": seed, "chat_template": chat_template, "echo": typer.echo}
    report = gatt_eval(model, prompts, turns, dialogues, instruction_in, settings, **options)
    finish_report(path, report, gatt_rows(report))
    picture = path.with_suffix(".png")
    typer.echo(f"plot: {picture}" if plot(report, picture) else "plot: skipped (matplotlib is not installed)")


@eval_app.command("harness")
@reports_user_errors
def eval_harness(
    model: ModelArg,
    tasks: Annotated[str, typer.Option(help="lm-eval task, group or tag names (or task YAML files), comma-separated.")],
    include_path: Annotated[
        Path | None, typer.Option(help="Folder of your own lm-eval task YAMLs, found next to lm-eval's.")
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help="Score only the first N examples of each task (a quick check).")
    ] = None,
    num_fewshot: Annotated[
        int | None, typer.Option(help="Few-shot examples per prompt (default: each task's own).")
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Requests lm-eval scores or generates together.")] = 8,
    apply_chat_template: Annotated[
        bool,
        typer.Option(
            "--apply-chat-template/--no-apply-chat-template",
            help="Wrap each prompt in the model's chat template, few-shot examples as earlier turns (for chat runs "
            "on generative tasks); off (lm-eval's default): plain text prompts.",
        ),
    ] = False,
    chat_template: ChatTemplate = "auto",
    output: ReportPath = None,
):
    """lm-evaluation-harness tasks (e.g. truthfulqa_mc2) and metrics on MODEL, loaded as every posttrain command does.

    A run folder is its 4-bit base with its adapter, tokenizer and chat template; lm-eval gets the loaded model.
    """
    from posttrain.evaluation.harness import harness_eval, harness_rows
    from posttrain.evaluation.report import report_path

    names = [name.strip() for name in tasks.split(",") if name.strip()]
    path = report_path("harness", output)
    quiet_libraries()
    options = {"include_path": include_path, "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size}
    options |= {"apply_chat_template": apply_chat_template, "chat_template": chat_template, "echo": typer.echo}
    report = harness_eval(model, names, **options)
    finish_report(path, report, harness_rows(report))


@eval_app.command("safety")
@reports_user_errors
def eval_safety(
    model: ModelArg,
    prompts: Annotated[
        str,
        typer.Option(
            help="Prompt file (.jsonl/.csv/...) or hub dataset (org/name[:split]) with a prompt column; or BOLD's "
            "prompts/*_prompt.json or ToxiGen's prompts/*.txt files as published (a file or their folder)."
        ),
    ],
    prompt_column: Annotated[
        str, typer.Option(help="Column holding each row's prompt text, or a list of prompts (BOLD's `prompts`).")
    ] = "prompt",
    group_column: Annotated[
        list[str] | None,
        typer.Option(
            help="Column whose values group the results (repeatable); default: the known ones present (ToxiGen's "
            "target_group/group, BOLD's domain/category; for BOLD's and ToxiGen's own files, what their names hold)."
        ),
    ] = None,
    mode: Annotated[
        str,
        typer.Option(
            help="completion: the model continues each prompt as plain text (how Llama 2 scored pretrained models); "
            "chat: each prompt is a user message in the chat template; auto: chat for a run folder, a model with a "
            "chat template or a --chat-template given, else completion."
        ),
    ] = "auto",
    classifier: Annotated[
        str, typer.Option(help="Toxicity classifier: toxigen_roberta (tomh/toxigen_roberta), a hub id or a folder.")
    ] = "toxigen_roberta",
    toxic_label: Annotated[
        str,
        typer.Option(
            help="The classifier's label (or index) that means toxic; auto: the one named like toxic/hate/offensive, "
            "else LABEL_1, else index 1 of two."
        ),
    ] = "auto",
    threshold: Annotated[float, typer.Option(help="A reply is toxic when P(toxic label) is above this.")] = 0.5,
    sentiment_of: Annotated[
        str, typer.Option(help="VADER scores prompt-and-reply (as Llama 2 scored BOLD) or the reply alone.")
    ] = "prompt-and-reply",
    chat_template: ChatTemplate = "auto",
    batch_size: BatchSize = 8,
    max_new_tokens: MaxNewTokens = 128,
    do_sample: DoSample = True,
    temperature: Temperature = 0.1,
    top_k: TopK = 0,
    top_p: TopP = 0.9,
    repetition_penalty: RepetitionPenalty = 1.0,
    seed: Annotated[int, typer.Option(help="Seed of the sampling and of the bootstrap.")] = 0,
    bootstrap: Annotated[int, typer.Option(help="Bootstrap resamples for the 95% intervals.")] = 1000,
    output: ReportPath = None,
):
    """Share of toxic replies and mean VADER sentiment, overall and per group, with bootstrap 95% intervals.

    Decoded as Llama 2's safety evaluation (temperature 0.1, top-p 0.9); the toxicity classifier defaults to ToxiGen's.
    """
    from posttrain.evaluation.report import report_path
    from posttrain.evaluation.safety import safety_eval, safety_rows

    path = report_path("safety", output)
    settings = generation_settings(max_new_tokens, do_sample, temperature, top_k, top_p, repetition_penalty)
    quiet_libraries()
    options = {"classifier": classifier, "toxic_label": toxic_label, "threshold": threshold}
    options |= {
        "prompt_column": prompt_column,
        "group_columns": tuple(group_column or ()),
        "sentiment_of": sentiment_of,
    }
    options |= {"seed": seed, "resamples": bootstrap, "chat_template": chat_template, "batch_size": batch_size}
    options["mode"] = mode
    report = safety_eval(model, prompts, settings, echo=typer.echo, **options)
    finish_report(path, report, safety_rows(report))
