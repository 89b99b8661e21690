"""Runs a user can trust: one writer per output, resume after kill -9 from the last complete checkpoint, a clean
stop on SIGTERM or Ctrl-C, and a plain message when a save fails for lack of room. Real processes where it matters."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.runs import RunFolder, locks

# One thread each: two trainings at once on a small machine. Unbuffered: a killed process's last lines are kept.
ENV = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def posttrain(*args) -> subprocess.Popen:
    command = [sys.executable, "-m", "posttrain", *map(str, args)]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def sft_recipe(write_recipe, **train):
    return write_recipe(train={"learning_rate": 1e-2, "save_strategy": "no"} | train)


def final_loss(run) -> float:
    history = json.loads((run / "metrics.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry][-1]


# ---------------------------------------------------------------- one writer per output


def test_two_commands_started_together_on_one_run_folder_one_trains_and_the_other_exits_2(write_recipe, tmp_path):
    path = sft_recipe(write_recipe, max_steps=60)  # long enough that the loser looks while the winner lives
    first, second = posttrain("sft", path), posttrain("sft", path)
    outcomes = sorted((p.wait(timeout=120), p.stderr.read(), p.pid) for p in (first, second))
    (ok, _, winner), (refused, message, _) = outcomes
    assert (ok, refused) == (0, 2), message
    holder = f"run folder {tmp_path / 'run'} is in use by another posttrain command (pid {winner}: posttrain sft"
    assert holder in message
    assert "Traceback" not in message
    assert (tmp_path / "run" / "metrics.json").is_file() and not (tmp_path / "run" / ".lock").exists()


HOLD = "import sys, time; from pathlib import Path; from posttrain.runs import locks; "
HOLD += "locks.acquire(Path(sys.argv[1]), 'x'); print('held', flush=True); time.sleep(60)"


def hold_lock(lock_file):
    """Another process holding `lock_file`, as a running posttrain command would."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_file)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_lock_dies_with_its_holder_even_on_kill_9(tmp_path):
    lock_file = tmp_path / ".out.lock"
    holder = hold_lock(lock_file)
    with pytest.raises(locks.UserError, match=f"pid {holder.pid}: "):
        locks.acquire(lock_file, "out")
    holder.kill()
    holder.wait()
    assert lock_file.exists()  # left behind, yet free
    locks.acquire(lock_file, "out")
    locks.release(lock_file)
    assert not lock_file.exists()


@pytest.mark.parametrize("command", ["generate", "merge", "eval"])
def test_generate_merge_and_eval_refuse_an_output_another_command_writes(command, tmp_path, sft_run):
    output = tmp_path / ("merged" if command == "merge" else "out.json")
    holder = hold_lock(locks.sibling_lock(output))
    try:
        args = {
            "generate": ["generate", sft_run, "--prompts", "builtin:pirate_sft", "--output", output],
            "merge": ["merge", sft_run, "--output", output],
            "eval": ["eval", "perplexity", sft_run, "--data", "builtin:pirate_sft", "--output", output],
        }[command]
        result = CliRunner().invoke(app, [str(a) for a in args])
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 2, result.output
    assert f"--output {output} is in use by another posttrain command (pid {holder.pid}: " in result.output
    assert not output.exists()


# ---------------------------------------------------------------- resume after kill -9


def wait_for_line(process: subprocess.Popen, start: str) -> list[str]:
    """Read the process's output up to a line beginning with `start` (or its end); return the lines read."""
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip("\n"))
        if line.startswith(start):
            break
    return lines


def test_kill_9_at_random_moments_then_resume_ends_where_an_uninterrupted_run_ends(write_recipe, tmp_path):
    """Killed during steps and during saves (a checkpoint every step), each --resume continues from the last
    complete checkpoint, and the final loss is the uninterrupted run's."""
    steps = 60  # longer than 5 short lives of the process, so that every kill lands before the end
    whole = write_recipe("whole.yaml", train={"max_steps": steps}, output_dir=str(tmp_path / "whole"))
    assert posttrain("sft", whole).wait(timeout=120) == 0
    path = write_recipe(train={"max_steps": steps, "save_steps": 1, "save_total_limit": 2})
    run, rng, kills, resumed_from = RunFolder(tmp_path / "run"), random.Random(0), 0, []

    def start():  # as a user would: --resume once a checkpoint is complete, else start over
        return posttrain("sft", path, "--resume" if run.latest_checkpoint() else "--overwrite")

    while kills < 5 and not run.finished:  # a kill can land after metrics.json, as the process exits
        process = start()
        said = wait_for_line(process, "{'loss'")  # training began: each step logs its loss
        time.sleep(rng.uniform(0, 0.5))
        if process.poll() is not None:
            break  # finished before the kill
        process.send_signal(signal.SIGKILL)
        out, _ = process.communicate()
        kills += 1
        resumed_from += [line for line in said + out.splitlines() if line.startswith("resume:")]
    if not run.finished:
        process = start()  # runs to the end
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        resumed_from += [line for line in out.splitlines() if line.startswith("resume:")]
    print(f"kills survived: {kills}; said on resume:", *resumed_from, sep="\n")
    assert kills == 5 and any("continuing after step" in line for line in resumed_from)
    difference = abs(final_loss(run.path) - final_loss(tmp_path / "whole"))
    print(f"final-loss difference to the uninterrupted run: {difference:.3g}")
    assert difference <= 1e-6


# ---------------------------------------------------------------- a clean stop on SIGTERM or Ctrl-C


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_a_first_ctrl_c_saves_a_checkpoint_exits_3_and_says_how_to_resume(write_recipe, signal_number):
    path = sft_recipe(write_recipe, max_steps=400)  # far longer than the test waits
    process = posttrain("sft", path)
    wait_for_line(process, "{'loss'")
    process.send_signal(signal_number)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 3, err
    assert f"continue with: posttrain sft {path} --resume" in err and "Traceback" not in err
    run = RunFolder(path.parent / "run")
    stopped_at = run.latest_checkpoint()  # save_strategy "no": this checkpoint is the stop's own
    assert stopped_at is not None and f"checkpoint saved: {stopped_at}" in err
    assert not run.finished
    result = CliRunner().invoke(
        app, ["sft", str(path), "--resume", "--set", "train.max_steps=" + str(step(stopped_at) + 2)]
    )
    assert result.exit_code == 0, result.output
    assert f"continuing after step {step(stopped_at)}" in result.output


def test_a_second_ctrl_c_stops_at_once_without_a_checkpoint(write_recipe):
    path = sft_recipe(write_recipe, max_steps=400, gradient_accumulation_steps=64)  # steps of a second or more
    process = posttrain("sft", path)
    wait_for_line(process, "{'loss'")
    process.send_signal(signal.SIGINT)
    for line in process.stderr:  # the first is taken in: it says so
        if "stopping after this step" in line:
            break
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode not in (0, 3), err
    assert RunFolder(path.parent / "run").latest_checkpoint() is None


def step(checkpoint) -> int:
    return int(checkpoint.name.rpartition("-")[2])


# ---------------------------------------------------------------- a save that fails


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES])
def test_a_failed_save_exits_2_naming_the_path_and_keeps_the_last_checkpoint(write_recipe, monkeypatch, code):
    """The failure is injected where transformers writes a checkpoint's RNG state (root ignores chmod, and a full
    disk needs a mount): checkpoint-2's weights are written, its save fails, checkpoint-1 stays the one to resume."""
    from transformers import Trainer

    save_rng_state = Trainer._save_rng_state

    def fail_at_step_2(self, output_dir):
        if self.state.global_step == 2:
            raise OSError(code, os.strerror(code), os.path.join(output_dir, "rng_state.pth"))
        save_rng_state(self, output_dir)

    path = write_recipe(train={"max_steps": 3, "save_steps": 1})
    monkeypatch.setattr(Trainer, "_save_rng_state", fail_at_step_2)
    result = CliRunner().invoke(app, ["sft", str(path)])
    run = RunFolder(path.parent / "run")
    assert result.exit_code == 2, result.output
    assert f"could not write {run.checkpoints / 'checkpoint-2' / 'rng_state.pth'}: {os.strerror(code)}" in result.output
    assert f"last complete checkpoint, {run.checkpoints / 'checkpoint-1'}, is intact" in result.output
    assert "Traceback" not in result.output
    monkeypatch.setattr(Trainer, "_save_rng_state", save_rng_state)  # room again
    result = CliRunner().invoke(app, ["sft", str(path), "--resume"])
    assert result.exit_code == 0, result.output
    assert "checkpoint-2 is incomplete" in result.output and "continuing after step 1" in result.output


def test_a_really_full_disk_exits_2_naming_the_checkpoint(write_recipe, tmp_path):
    """A 1.4 MB tmpfs holds two checkpoints of tiny-llama2's adapter, not three (needs the right to mount)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1400k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        path = write_recipe(train={"max_steps": 8, "save_steps": 1}, output_dir=str(disk / "run"))
        process = posttrain("sft", path)
        _, err = process.communicate(timeout=120)
        run = RunFolder(disk / "run")
        latest = run.latest_checkpoint()
    finally:
        subprocess.run(["umount", str(disk)], check=True)
    assert process.returncode == 2, err
    assert "could not write" in err and "Traceback" not in err
    assert latest is not None and f"last complete checkpoint, {latest}, is intact" in err
