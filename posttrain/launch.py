"""More than one GPU: `--num-processes N` and `--accelerate-config` make a training command start itself again
under `accelerate launch`, which runs it in N processes (DDP, DeepSpeed ZeRO or FSDP; several machines through
the user's own accelerate config). posttrain has no distributed code of its own: accelerate starts the processes,
TRL's trainers and accelerate split the batches and gather the weights, and only the main process writes.

Work outside a trainer that one process could do alone (the sampling of rs, gatt and distill, the held-out check of
ppo and rs) is shared by batches (`share_batches`, `share_items`), so that no process waits long for another; what
stays on the main process (writing the run folder) is covered by the process group's timeout, set explicitly from
--timeout-minutes (the processes read it from POSTTRAIN_TIMEOUT_MINUTES; a user's own `accelerate launch` can set it).
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from importlib.util import find_spec
from pathlib import Path
from typing import NoReturn

import yaml

from posttrain import fsdp_cpu
from posttrain.errors import UserError

PRESETS_DIR = Path(__file__).parent / "accelerate_configs"
PRESETS = {
    "ddp": "DDP: one full copy of the 4-bit model per GPU, gradients averaged",
    "zero2": "DeepSpeed ZeRO-2: optimizer state and gradients sharded across GPUs",
    "zero3": "DeepSpeed ZeRO-3: the model's weights sharded too",
    "fsdp": "PyTorch FSDP: weights, gradients and optimizer state sharded (FSDP-QLoRA)",
}
NEEDS_CUDA = {"DEEPSPEED", "FSDP"}  # accelerate runs these on GPUs only (FSDP on CPUs for tests: posttrain.fsdp_cpu)
# Methods that sample with a model of their own, loaded outside the trainer. Under FSDP or ZeRO-3 the base is loaded
# to be sharded (no device_map), so that model would sample on the CPU; PPO's loop also keeps four adapters on one
# base, which accelerate's FSDP wrapping has not been shown to handle.
UNSHARDED_METHODS = {"ppo", "rs", "gatt", "distill"}
FSDP_ACCELERATE = "1.16"  # an accelerate the fsdp preset is known to run with (tests/test_fsdp.py); 1.10.1 fails
LAUNCHED = "POSTTRAIN_LAUNCHED"  # set for the launched processes, so that they train instead of launching again
TIMEOUT = "POSTTRAIN_TIMEOUT_MINUTES"  # how long a process waits for the others (a collective, a barrier)
# Generous, for what stays on the main process (writing the run folder) and for shares of work that take unlike times
# (the main process may get one batch more); NCCL's own default is 10 minutes. A process that really hangs is found
# later.
DEFAULT_TIMEOUT_MINUTES = 120.0


@dataclass(frozen=True)
class Launch:
    """How `accelerate launch` is to start a training command: its config file and number of processes."""

    config_file: Path
    num_processes: int | None  # None: the user's config file says
    cpu: bool  # no CUDA: the processes train on the CPU
    preset: bool  # a shipped config (one machine) rather than the user's own
    timeout_minutes: float | None = None  # None: DEFAULT_TIMEOUT_MINUTES, or what the environment says

    def command(self, args: list[str]) -> list[str]:
        """The launcher's command line that runs `posttrain ARGS` in every process."""
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(self.config_file)]
        if self.num_processes is not None:
            command += ["--num_processes", str(self.num_processes)]
        if self.preset:
            # A free port, so two runs on one machine (or a test beside a run) do not collide on 29500; a user's
            # own config keeps its port, which the other machines of a multi-node run must know.
            command += ["--main_process_port", "0"]
        return command + ["-m", "posttrain", *args]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ, **{LAUNCHED: "1"})
        if self.timeout_minutes is not None:
            env[TIMEOUT] = str(self.timeout_minutes)
        if self.cpu:
            # accelerate's own --cpu flag would start one process (its multi-CPU launcher is mpirun). The ddp
            # config's torchrun launcher starts N; this variable makes them one gloo group on the CPU.
            env["ACCELERATE_USE_CPU"] = "true"
        return env


def inside_launch() -> bool:
    """True in a process that accelerate launch (or torchrun) started: the launcher already chose the processes."""
    return LAUNCHED in os.environ or "LOCAL_RANK" in os.environ


def is_main_process() -> bool:
    """Rank 0 of a launched run, or the only process: the one that talks to the terminal."""
    return os.environ.get("RANK", "0") == "0"


def plan_launch(
    num_processes: int | None,
    accelerate_config: str | None,
    timeout_minutes: float | None = None,
    method: str | None = None,
) -> Launch | None:
    """The launch that --num-processes, --accelerate-config and --timeout-minutes ask for, checked before anything
    starts; None when this process trains by itself."""
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num-processes must be 1 or more, got {num_processes}.")
    if timeout_minutes is not None and not timeout_minutes > 0:
        raise UserError(f"--timeout-minutes must be more than 0, got {timeout_minutes}.")
    if inside_launch() or (accelerate_config is None and num_processes in (None, 1)):
        return None
    config_file, preset = find_config(accelerate_config or "ddp")
    settings = read_config(config_file)
    kind = str(settings.get("distributed_type", "")).upper()
    name = accelerate_config or "ddp"
    sharded = kind == "FSDP" or (
        kind == "DEEPSPEED" and (settings.get("deepspeed_config") or {}).get("zero_stage") == 3
    )
    if sharded and method in UNSHARDED_METHODS:
        raise UserError(
            f"--accelerate-config {name}: {method} samples with a model it loads outside the trainer, whole on each "
            "GPU, which a sharded launch (FSDP, ZeRO-3) would load on the CPU. Use --accelerate-config ddp (or "
            "--num-processes N alone)."
        )
    if kind == "DEEPSPEED" and find_spec("deepspeed") is None:
        raise UserError(f"--accelerate-config {name} runs DeepSpeed, which is not installed: pip install deepspeed")
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind in NEEDS_CUDA and gpus == 0 and not (kind == "FSDP" and fsdp_cpu.asked()):
        raise UserError(
            f"--accelerate-config {name} ({kind}) needs CUDA GPUs, and this machine has none. "
            "On a CPU, --num-processes N alone runs N processes with DDP"
            + (f" (to test FSDP on CPU processes: {fsdp_cpu.OPT_IN}=1)." if kind == "FSDP" else ".")
        )
    if kind == "FSDP" and not fsdp_supported():
        raise UserError(
            f"--accelerate-config {name} (FSDP2) needs accelerate {FSDP_ACCELERATE} or later: older ones fail to "
            "load 4-bit weights into the shards. pip install -U accelerate"
        )
    if preset and num_processes is None:
        num_processes = max(gpus, 1)  # a preset on its own uses every GPU of this machine
    if num_processes is None and "num_processes" not in settings:
        raise UserError(
            f"{config_file} does not say how many processes to run: add num_processes to it, or pass --num-processes N."
        )
    wanted = num_processes or settings["num_processes"]
    if gpus and int(settings.get("num_machines", 1)) == 1 and wanted > gpus:
        raise UserError(f"--num-processes {wanted} asks for one GPU per process, but this machine has {gpus}.")
    return Launch(config_file, num_processes, cpu=gpus == 0, preset=preset, timeout_minutes=timeout_minutes)


def fsdp_supported() -> bool:
    """Whether the installed accelerate runs the fsdp preset: 1.10.1 stops in fsdp2_load_full_state_dict on 4-bit
    weights ("`weight` is not an nn.Module"); FSDP_ACCELERATE works (versions between were not tried)."""
    from importlib.metadata import version

    from packaging.version import Version

    return Version(version("accelerate")) >= Version(FSDP_ACCELERATE)


def find_config(name: str) -> tuple[Path, bool]:
    """(config file, whether it is a shipped preset) for a preset name or a path to the user's accelerate config."""
    if name in PRESETS:
        return PRESETS_DIR / f"{name}.yaml", True
    path = Path(name).expanduser()
    if path.is_file():
        return path, False
    if path.suffix in (".yaml", ".yml", ".json") or "/" in name:
        raise UserError(f"--accelerate-config: no such file {name}.")
    close = difflib.get_close_matches(name, list(PRESETS), n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    raise UserError(
        f"--accelerate-config: unknown preset {name}.{hint} Presets: {', '.join(PRESETS)}; "
        "or give the path of your own accelerate config file (`accelerate config --config_file FILE` writes one)."
    )


def read_config(path: Path) -> dict:
    try:
        settings = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise UserError(f"--accelerate-config: cannot read {path}: {err}") from None
    if not isinstance(settings, dict) or "distributed_type" not in settings:
        raise UserError(
            f"--accelerate-config: {path} is not an accelerate config (a YAML mapping with distributed_type); "
            "`accelerate config --config_file FILE` writes one."
        )
    return settings


def relaunch(launch: Launch, args: list[str]) -> NoReturn:
    """Become `accelerate launch ... -m posttrain ARGS`: its exit status is this command's, and what this process
    held to check the recipe (data, tokenizer, a CUDA context) is freed for the training processes."""
    sys.stdout.flush()
    sys.stderr.flush()
    command = launch.command(args)
    os.execve(command[0], command, launch.environment())


# ---------------------------------------------------------------- inside the launched processes


def process_group_timeout() -> timedelta:
    """How long a process waits for the others before the run fails: --timeout-minutes, through the environment."""
    value = os.environ.get(TIMEOUT, "")
    try:
        minutes = float(value) if value else DEFAULT_TIMEOUT_MINUTES
    except ValueError:
        raise UserError(f"{TIMEOUT}={value} is not a number of minutes.") from None
    if not minutes > 0:
        raise UserError(f"{TIMEOUT}={value}: the timeout must be more than 0 minutes.")
    return timedelta(minutes=minutes)


def share_batches(state, starts: list[int], work: Callable[[int], list]) -> list[list]:
    """work(start) for every batch start, [work(starts[0]), work(starts[1]), ...] in every process: each process
    does every N-th batch (accelerate's `state`: N processes, this one's index) and the results are gathered.
    A batch's result depends on its start alone (its seed is drawn from it), so it is what one process would get."""
    mine = {start: work(start) for start in starts[state.process_index :: state.num_processes]}
    done = gathered(state, mine)
    return [done[start] for start in starts]


def gathered(state, mine: dict) -> dict:
    """Every process's results (one dict per process, keyed by position) merged into one, in every process."""
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        for theirs in gather_object([mine]):
            mine |= theirs
    return mine


def share_items(state, items: list, batch_size: int, work: Callable[[list], list]) -> list:
    """work(items) with one result per item, in every process: each process calls work once, on every N-th batch of
    `batch_size` items (whole batches, the ones one process would form), and the results are gathered in order.
    For work that loads a model first (once per process, not per batch) and whose batches give what they would
    give alone; a process with no batch does no work."""
    mine = [
        index
        for start in range(state.process_index * batch_size, len(items), state.num_processes * batch_size)
        for index in range(start, min(start + batch_size, len(items)))
    ]
    done = gathered(state, dict(zip(mine, work([items[index] for index in mine]), strict=True)) if mine else {})
    return [done[index] for index in range(len(items))]


def planned_gpus(method: str, num_processes: int | None, accelerate_config: str | None) -> tuple[int, str] | None:
    """`posttrain plan --num-processes N --accelerate-config PRESET`: (N, preset) to plan one GPU of several, or
    None for one GPU. Only the presets say how the model is split; a user's own file is planned as its preset."""
    if num_processes is not None and num_processes < 1:
        raise UserError(f"--num-processes must be 1 or more, got {num_processes}.")
    preset = accelerate_config or "ddp"
    if preset not in PRESETS:
        close = difflib.get_close_matches(preset, list(PRESETS), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise UserError(f"--accelerate-config: plan knows the presets {', '.join(PRESETS)}, not {preset}.{hint}")
    if preset in ("zero3", "fsdp") and method in UNSHARDED_METHODS:
        raise UserError(f"--accelerate-config {preset}: {method} cannot run sharded; plan it with ddp.")
    if num_processes in (None, 1):
        if accelerate_config:
            raise UserError(f"--accelerate-config {preset}: say over how many GPUs with --num-processes N.")
        return None
    return num_processes, preset
