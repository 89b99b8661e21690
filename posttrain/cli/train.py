"""The training commands (one per row of posttrain.methods.METHODS) and `posttrain quickstart`.

Each parses its options, reads the recipe, and hands it to posttrain.methods.common.run_method, or relaunches
itself under accelerate for several processes. Heavy libraries are imported inside commands.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from posttrain.cli.support import Overrides, RecipeArg, quiet_libraries, reports_user_errors, training_guards
from posttrain.methods import METHODS

train_app = typer.Typer()

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
TimeoutMinutes = Annotated[
    float | None,
    typer.Option(
        help="With several processes: how long one waits for the others before the run fails (default 120; "
        "NCCL's own is 10). The main process alone writes the run folder and runs ppo's and rs's held-out check.",
        metavar="MINUTES",
        show_default=False,
    ),
]


def load_method_recipe(recipe: str, method: str, overrides: list[str] | None, output_dir: Path | None):
    from posttrain.recipe import load_recipe

    extra = [f"output_dir={output_dir}"] if output_dir else []
    return load_recipe(recipe, (overrides or []) + extra, method=method)


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
    timeout_minutes: float | None = None,
) -> None:

    from posttrain.launch import is_main_process, plan_launch, relaunch
    from posttrain.methods.common import run_method
    from posttrain.plan.fit import warn_if_too_big

    launch = plan_launch(num_processes, accelerate_config, timeout_minutes, method)
    loaded = load_method_recipe(recipe, method, overrides, output_dir)
    quiet_libraries()
    if is_main_process():
        warn_if_too_big(loaded, typer.echo)  # on a GPU: the plan's estimate, before anything loads
    # Before a launch, this process checks recipe, model, data and run folder (a dry run, quiet unless asked for),
    # so that mistakes exit 2 here instead of failing in every launched process.
    talks = is_main_process() and (launch is None or dry_run)
    echo = typer.echo if talks else lambda _: None
    options = {"resume": resume, "overwrite": overwrite, "dry_run": dry_run or launch is not None, "echo": echo}
    options["gpu_stand_in"] = dry_run  # the user's dry run checks a GPU recipe without a GPU; a launch's check does not
    resume_command = shlex.join(["posttrain", *training_args(method, recipe, overrides, output_dir, True, False)])
    with training_guards(loaded.output_dir, resume_command):
        metrics = run_method(loaded, **options)
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
    if "mean_reward" in metrics:  # grpo
        trend = metrics["mean_reward"]
        return f"mean reward {trend['first']:.3f} over the first steps, {trend['last']:.3f} over the last"
    line = f"train loss {metrics['train'].get('train_loss', 0):.4f}"
    if "distill" in metrics:
        line += f"; {metrics['distill']['kept']} of {metrics['distill']['prompts']} preprompted answers kept"
    if "gatt" in metrics:
        line += f"; trained on {metrics['gatt']['kept']} of {metrics['gatt']['dialogues']} built dialogues"
    if "reward_accuracy" in metrics:
        accuracy = metrics["reward_accuracy"]
        line += f"; eval accuracy {accuracy['accuracy']:.3f} on {accuracy['pairs']} held-out pairs"
    return line


def add_training_command(method: str, help_text: str) -> None:
    @train_app.command(name=method, help=help_text)
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
        timeout_minutes: TimeoutMinutes = None,
    ):
        options = (num_processes, accelerate_config, timeout_minutes)
        train(method, recipe, overrides, output_dir, resume, overwrite, dry_run, *options)


for _method in METHODS.values():
    add_training_command(_method.name, _method.help)


@train_app.command()
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
