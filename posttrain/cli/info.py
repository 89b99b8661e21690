"""The commands that look before training: the shipped recipes, `plan` (will it fit a GPU), `env`, and
`data inspect`. Heavy libraries are imported inside commands."""

from __future__ import annotations

from typing import Annotated

import typer

from posttrain.cli.support import Overrides, RecipeArg, quiet_libraries, reports_user_errors
from posttrain.methods import METHODS
from posttrain.plan.fit import GPUS

info_app = typer.Typer()
data_app = typer.Typer(help="Look at a data file before training on it.", no_args_is_help=True)


@info_app.command()
def recipes(
    keys: Annotated[bool, typer.Option("--keys", help="Also list every recipe key with its default.")] = False,
):
    """List the shipped recipes (run one by name: `posttrain sft smollm2-135m/sft`)."""
    from posttrain.recipe import SECTIONS, field_help, read_yaml, shipped_recipes

    for name, path in shipped_recipes().items():
        command = path.read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
        method = read_yaml(path).get("method", "?")
        typer.echo(f"{name:<28} {method:<7} {command}")
    if keys:
        method_sections = {name: cls for method in METHODS.values() for name, cls in method.sections.items()}
        for section, cls in (SECTIONS | method_sections).items():
            only = f" ({section} recipes only)" if section in method_sections else ""
            typer.echo(f"\n{section}:{only}")
            for key, default, text in field_help(cls):
                typer.echo(f"  {key:<19} {default!s:<12} {text}")
        typer.echo("\ntrain: (any field of the method's TRL config: SFTConfig, DPOConfig, ...)")
        for line in train_default_lines():
            typer.echo(line)


def train_default_lines() -> list[str]:
    """The `train:` values posttrain sets when a recipe does not: those of every TRL-trained method, then each
    method's own (read from the method modules, so importing them brings torch)."""
    from posttrain.methods.train_defaults import COMMON_TRAIN_DEFAULTS

    def shown(value) -> str:  # learning rates as recipes write them (2e-4)
        return f"{value:.0e}".replace("e-0", "e-") if isinstance(value, float) and 0 < value < 1e-3 else str(value)

    def listed(values: dict) -> str:
        return ", ".join(f"{key} {shown(value)}" for key, value in values.items())

    lines = [f"  posttrain's defaults (the recipe's values win): {listed(COMMON_TRAIN_DEFAULTS)}; and per method:"]
    for method in METHODS.values():
        if method.train_config is None:
            lines.append(f"  {method.name:<8} no train: section (its settings are in {method.name}:)")
            continue
        own = {k: v for k, v in method.module.TRAIN_DEFAULTS.items() if COMMON_TRAIN_DEFAULTS.get(k) != v}
        lines.append(f"  {method.name:<8} {listed(own)}")
    return lines


@info_app.command()
@reports_user_errors
def plan(
    recipe: RecipeArg,
    overrides: Overrides = None,
    gpu: Annotated[str, typer.Option(help="GPU to plan for: " + ", ".join(GPUS) + ".")] = "t4",
    memory_gb: Annotated[
        float | None, typer.Option("--memory-gb", help="Plan for a GPU with this much memory (GiB) instead.")
    ] = None,
    num_processes: Annotated[
        int | None, typer.Option(help="Plan one GPU of N, one process each.", metavar="N", show_default=False)
    ] = None,
    accelerate_config: Annotated[
        str | None,
        typer.Option(help="How N GPUs split the run: ddp (default), zero2, zero3, fsdp.", metavar="PRESET"),
    ] = None,
):
    """Predicted peak GPU memory of a recipe, term by term, whether it fits, and what to change to fit; and about
    how long it runs on a T4, estimated from assumed speeds (not measured).

    Reads only the model's config (shipped for the Llama 2 7B and 13B sizes, so it works offline). Exit status 1
    when the run is predicted not to fit.
    """
    from posttrain.errors import UserError
    from posttrain.launch import planned_gpus
    from posttrain.plan.estimate import Models
    from posttrain.plan.fit import plan_lines
    from posttrain.plan.timing import time_lines
    from posttrain.precision import Hardware
    from posttrain.recipe import load_recipe

    loaded = load_recipe(recipe, overrides or [])
    if memory_gb is not None:
        if memory_gb <= 0:
            raise UserError(f"--memory-gb must be above 0, got {memory_gb:g}.")
        name, total, hardware = f"a {memory_gb:g} GiB GPU", memory_gb, Hardware("cuda", "GPU", (8, 0))
    elif gpu in GPUS:
        name, total, hardware = GPUS[gpu].name, GPUS[gpu].memory_gib, GPUS[gpu].hardware
    else:
        raise UserError(f"--gpu {gpu}: unknown GPU; choose one of {', '.join(GPUS)}, or give --memory-gb N.")
    gpus = planned_gpus(loaded.method, num_processes, accelerate_config)
    lines, found = plan_lines(loaded, name, total, hardware, gpus)
    lines[2:2] = time_lines(loaded, Models.of(loaded).policy.shape)  # after plan and model; of a T4 whatever --gpu
    for line in lines:
        typer.echo(line)
    if not found.fits:
        raise typer.Exit(code=1)  # so that a script can test it: `posttrain plan RECIPE --gpu t4 && ...`


@info_app.command()
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


# `posttrain data` is registered after `env`, where it has always been listed.
info_app.add_typer(data_app, name="data")


@data_app.command("inspect")
@reports_user_errors
def data_inspect(
    file: Annotated[str, typer.Argument(help="Data file, folder, glob, hub dataset id or builtin:NAME.")],
    model: Annotated[str, typer.Option(help="Model whose tokenizer counts the tokens.")] = "smollm2-135m",
    chat_template: Annotated[
        str | None,
        typer.Option(help="llama2 | chatml | model | path.jinja [default: what a recipe for --model picks]"),
    ] = None,
    data_format: Annotated[str, typer.Option("--format", help="auto, prompts, or a format name.")] = "auto",
    max_length: Annotated[int, typer.Option(help="Length limit to report against.")] = 1024,
):
    """Detected format (SFT, preference, unpaired feedback, prompts or user-only dialogues), row count and
    token-length histogram of a data file, and how many rows training keeps (counted as training counts them, with
    the data: defaults); for feedback, the desirable/undesirable balance."""
    from posttrain.data.feedback import balance_lines, is_feedback
    from posttrain.data.lengths import LengthReport, measure, preference_length_lines
    from posttrain.data.prepare import fit_to_length, is_preference, load_examples
    from posttrain.data.sources import read_rows
    from posttrain.data.text_blocks import pack_documents
    from posttrain.data.tool_calls import turn_lines
    from posttrain.errors import UserError
    from posttrain.models.loading import load_tokenizer, resolve_model
    from posttrain.recipe import default_chat_template
    from posttrain.sections import DataSection

    quiet_libraries()
    chat_template = chat_template or default_chat_template(model)
    counted_with = f"tokens counted with {model}, {chat_template} template"
    kind = "prompts" if data_format == "prompts" else prompt_set_kind(read_rows(file)[0].data)
    if data_format in ("auto", "prompts") and kind:
        tokenizer = load_tokenizer(resolve_model(model), chat_template) if kind == "prompts" else None
        for line in prompt_lines(file, tokenizer, max_length, counted_with) if tokenizer else dialogue_lines(file):
            typer.echo(line)
        return
    fmt, rows, examples = load_examples(file, data_format, preference=None)
    feedback = is_feedback(rows)
    preference = is_preference(rows) and not feedback
    tokenizer = load_tokenizer(resolve_model(model), chat_template)
    kind = "rows of unpaired feedback (posttrain kto)" if feedback else "preference pairs" if preference else "rows"
    kind = kind.replace("rows", "row").replace("pairs", "pair") if len(rows) == 1 else kind
    typer.echo(f"{file}: format {fmt}, {len(rows)} {kind} ({counted_with})")
    if "messages" in examples[0] and not feedback:  # SFT conversations: their turns, calls and tools
        for line in turn_lines(examples):
            typer.echo(line)
    if feedback:
        for line in balance_lines(examples):
            typer.echo(line.replace("labels      ", "labels: ").strip())
    if preference:
        for line in preference_length_lines(tokenizer, examples):
            typer.echo(line)
        labels = sorted({e["strength"] for e in examples if "strength" in e})
        if labels:
            typer.echo(f"strength labels: {', '.join(labels)}")
    if fmt == "text":  # trained as blocks (data.text_blocks), so nothing is too long
        _, blocks = pack_documents(tokenizer, [e["text"] for e in examples], max_length)
        lengths = measure(tokenizer, rows, examples)
        for line in LengthReport(lengths, max_length, "blocks", blocks=blocks, unit="document").lines():
            typer.echo(line)
        return
    # What training keeps, by training's own code with the data: defaults (on_too_long and identical_pairs drop,
    # cut_long_prompts on); no eval split is held out.
    section = DataSection(train=file, max_length=max_length)
    settings = "data.on_too_long: drop" + (", identical_pairs: drop, cut_long_prompts: true" if preference else "")
    unit = "pairs" if preference else "rows"
    try:
        kept, _, report = fit_to_length(section, tokenizer, rows, examples, preference, "train")
    except UserError as err:  # nothing left: training stops with this message
        lengths = measure(tokenizer, rows, examples)
        for line in LengthReport(lengths, max_length, "drop", unit=unit[:-1]).lines() + [f"training stops: {err}"]:
            typer.echo(line)
        return
    for line in report.lines():
        typer.echo(line)
    typer.echo(f"training keeps {len(kept)} of {len(examples)} {unit} ({settings})")


# Columns of a row that holds an answer: a row without any of them, whose prompt has no assistant turn, is a prompt.
ANSWER_KEYS = frozenset({"completion", "chosen", "rejected", "output", "label", "text"})
ANSWER_SPEAKERS = frozenset({"assistant", "gpt", "function_call", "tool", "observation"})


def prompt_set_kind(row: dict) -> str | None:
    """prompts (what generate, rs, ppo and grpo read), dialogues (user turns only: what gatt reads), or None."""
    if ANSWER_KEYS & set(row):
        return None
    if "prompt" in row:
        return "prompts"
    turns = row.get("messages") or row.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(turn, dict) for turn in turns):
        return None
    speakers = [turn.get("role") or turn.get("from") for turn in turns]
    if not turns or ANSWER_SPEAKERS & set(speakers):
        return None
    return "dialogues" if speakers.count("user") + speakers.count("human") > 1 else "prompts"


def dialogue_lines(source: str) -> list[str]:
    """data inspect of dialogues of user turns only, read as gatt and `eval gatt` read them."""
    import statistics

    from posttrain.data.dialogues import read_user_turns

    turns = [len(dialogue) for dialogue in read_user_turns(source)]
    return [
        f"{source}: format dialogues (user turns only), {len(turns)} dialogues; read by gatt and eval gatt, which "
        "write the replies",
        f"user turns per dialogue: min {min(turns)}, median {statistics.median(turns):g}, max {max(turns)}",
    ]


def prompt_lines(source: str, tokenizer, max_length: int, counted_with: str) -> list[str]:
    """data inspect of a prompt-only set: prompts read as rs, ppo, grpo and generate read them (data.prompts)."""
    from posttrain.data.lengths import LengthReport, chat_length
    from posttrain.data.prompts import read_prompts

    prompts, too_long = read_prompts(source, tokenizer, max_length)
    lengths = [chat_length(tokenizer, p["prompt"], add_generation_prompt=True, tools=p.get("tools")) for p in prompts]
    tagged = sum(p["safety"] for p in prompts)
    noun = "prompt" if len(prompts) == 1 else "prompts"
    lines = [
        f"{source}: format prompts, {len(prompts)} {noun} ({counted_with}); read by generate, rs, ppo, grpo, gatt "
        "and distill",
    ]
    if tagged:
        lines.append(f"{tagged} tagged safety (scored by the safety reward run of a helpfulness and safety pair)")
    lines += LengthReport(lengths, max_length, "error", unit="prompt").lines()
    if too_long:
        lines.append(
            f"{len(too_long)} of {len(prompts)} prompts longer than {max_length} tokens (first at "
            f"{next(iter(too_long.values()))}): rs, ppo and grpo refuse them (they also keep room for the reply)"
        )
    return lines
