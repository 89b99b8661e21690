"""The `posttrain` command. Heavy libraries are imported inside commands so `posttrain --help` is instant.

Exit status: 0 success; 2 a user error (bad recipe, data, path, hardware request, an output another command is
writing, a save that failed for lack of room or permission); 3 stopped on SIGTERM or Ctrl-C with a checkpoint to
resume from; 1 an unexpected failure.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from posttrain.cli_support import quiet_libraries, reports_user_errors, training_guards
from posttrain.cli_use import use_app

app = typer.Typer(
    help="Post-train Llama-2-family models on one small GPU: SFT, reward, PPO, rejection sampling, DPO, ORPO.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Look at a data file before training on it.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(use_app)  # chat, generate, merge, eval, serve: commands of their own module, at the top level

Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key: section.key=value (repeatable)."),
]
OutputDir = Annotated[Path | None, typer.Option(help="Run folder to write (overrides output_dir).")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace a run already in output_dir.")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="Check recipe and data, print the plan, load no weights.")]
NumProcesses = Annotated[
    int | None,
    typer.Option(
        help="Train in N processes, one per GPU, through accelerate launch (default 1; with --accelerate-config, "
        "every GPU or what your config file says). With no GPU: N CPU processes.",
        metavar="N",
        show_default=False,
    ),
]
AccelerateConfig = Annotated[
    str | None,
    typer.Option(
        help="Launch through accelerate with a preset (ddp, zero2, zero3, fsdp) or your own accelerate config file "
        "(several machines).",
        metavar="PRESET|FILE",
        show_default=False,
    ),
]


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
GPU_NAMES = ("t4", "l4", "a10g", "a100-40gb", "a100-80gb", "h100")  # posttrain.fit.GPUS, without importing it


def train(
    method: str,
    recipe: str,
    overrides,
    output_dir,
    resume: bool,
    overwrite: bool,
    dry_run: bool,
    num_processes: int | None = None,
    accelerate_config: str | None = None,
) -> None:
    import importlib

    from posttrain.fit import warn_if_too_big
    from posttrain.launch import is_main_process, plan_launch, relaunch
    from posttrain.methods.common import run_method

    launch = plan_launch(num_processes, accelerate_config)
    loaded = load_method_recipe(recipe, method, overrides, output_dir)
    quiet_libraries()
    if is_main_process():
        warn_if_too_big(loaded, typer.echo)  # on a GPU: the plan's estimate, before anything loads
    module = importlib.import_module(f"posttrain.methods.{method}")
    # Before a launch, this process checks recipe, model, data and run folder (a dry run, quiet unless asked for),
    # so that mistakes exit 2 here instead of failing in every launched process.
    talks = is_main_process() and (launch is None or dry_run)
    echo = typer.echo if talks else lambda _: None
    options = {"resume": resume, "overwrite": overwrite, "dry_run": dry_run or launch is not None, "echo": echo}
    # ppo is posttrain's own trainer; the TRL-backed methods share run_method
    resume_command = shlex.join(["posttrain", *training_args(method, recipe, overrides, output_dir, True, False)])
    with training_guards(loaded.output_dir, resume_command):
        metrics = module.run(loaded, **options) if hasattr(module, "run") else run_method(module, loaded, **options)
    if launch is not None:
        args = training_args(method, recipe, overrides, output_dir, resume, overwrite)
        typer.echo(f"{'would launch' if dry_run else 'launching'}: {shlex.join(launch.command(args))}")
        if not dry_run:
            relaunch(launch, args)
        return
    if metrics is not None and is_main_process():
        typer.echo(f"done: run folder {loaded.output_dir} ({outcome(metrics)})")


def training_args(method: str, recipe: str, overrides, output_dir, resume: bool, overwrite: bool) -> list[str]:
    """The command line of a training command, without the launch options: what each launched process runs."""
    args = [method, recipe]
    for override in overrides or []:
        args += ["--set", override]
    if output_dir:
        args += ["--output-dir", str(output_dir)]
    return args + ["--resume"] * resume + ["--overwrite"] * overwrite


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
        num_processes: NumProcesses = None,
        accelerate_config: AccelerateConfig = None,
    ):
        train(method, recipe, overrides, output_dir, resume, overwrite, dry_run, num_processes, accelerate_config)


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
@reports_user_errors
def plan(
    recipe: RecipeArg,
    overrides: Overrides = None,
    gpu: Annotated[str, typer.Option(help="GPU to plan for: " + ", ".join(GPU_NAMES) + ".")] = "t4",
    memory_gb: Annotated[
        float | None, typer.Option("--memory-gb", help="Plan for a GPU with this much memory (GiB) instead.")
    ] = None,
):
    """Predicted peak GPU memory of a recipe, term by term, whether it fits, and what to change to fit.

    Reads only the model's config (shipped for the Llama 2 7B and 13B sizes, so it works offline).
    """
    from posttrain.errors import UserError
    from posttrain.fit import GPUS, plan_lines
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
    lines, _ = plan_lines(loaded, name, total, hardware)
    for line in lines:
        typer.echo(line)


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
