"""More than one process: `--num-processes` and `--accelerate-config` relaunch a training command under accelerate.
Two CPU processes train SFT, DPO, PPO and rs on tiny-llama2 and leave one run folder; rs's sampling is shared, so a
short --timeout-minutes holds; bad launch options exit 2 first."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from posttrain import fsdp_cpu, launch
from posttrain.cli import app
from posttrain.cli.train import training_args


@pytest.fixture
def outside_launch(monkeypatch):
    """As if typed in a shell: not a process that accelerate launch started."""
    for name in (launch.LAUNCHED, "LOCAL_RANK", "RANK", fsdp_cpu.OPT_IN):
        monkeypatch.delenv(name, raising=False)


def no_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def train_in_two_processes(method: str, recipe: Path, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "posttrain", method, str(recipe), "--num-processes", "2", *options]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def assert_one_finished_run(tmp_path: Path, run: Path, steps: int) -> dict:
    """One run folder holding one adapter and one metrics.json; both processes trained (one RNG state each)."""
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([run.name, "recipe.yaml"])
    assert [p.relative_to(run) for p in run.rglob("adapter_model.safetensors") if "checkpoints" not in p.parts] == [
        Path("adapter/adapter_model.safetensors")
    ]
    assert not list(run.glob("*.partial"))
    # saved every step; the last step has no checkpoint (the adapter is saved right after it)
    assert sorted(p.name for p in run.glob(f"checkpoints/checkpoint-{steps - 1}/rng_state_*.pth")) == [
        "rng_state_0.pth",
        "rng_state_1.pth",
    ]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final_step"] == steps
    assert math.isfinite(metrics["train"]["train_loss"])
    assert [entry["step"] for entry in metrics["log_history"] if "loss" in entry] == list(range(1, steps + 1))
    return metrics


def test_sft_in_two_processes_saves_one_adapter(tmp_path, write_recipe):
    done = train_in_two_processes("sft", write_recipe(train={"save_steps": 1}))
    assert "launching: " in done.stdout and "--num_processes 2" in done.stdout
    assert done.stdout.count("done: run folder") == 1  # the main process reports; the other one is quiet
    assert_one_finished_run(tmp_path, tmp_path / "run", steps=2)


def test_dpo_in_two_processes_continues_the_sft_run(tmp_path, write_recipe, sft_run):
    recipe = write_recipe(
        method="dpo",
        model={"name": str(sft_run), "quantization": "nf4"},
        data={"train": "builtin:pirate_prefs", "max_length": 128},
        train={"save_steps": 1},
    )
    train_in_two_processes("dpo", recipe)
    metrics = assert_one_finished_run(tmp_path, tmp_path / "run", steps=2)
    assert metrics["reference_model"] == f"the starting adapter of {sft_run}"
    assert not (tmp_path / "run" / "adapter" / "ref").exists()  # DPO's frozen reference copy is not the result


def test_ppo_with_ptx_in_two_processes_then_its_shared_heldout_check(tmp_path, rl_recipe):
    # PPO-ptx runs a second forward of the shared model before the backward: DDP must reduce both
    heldout = tmp_path / "heldout_prompts.jsonl"
    heldout.write_text("".join(json.dumps({"prompt": f"Where be treasure number {i}?"}) + "\n" for i in range(3)))
    recipe = rl_recipe("ppo", steps=2, ptx_coef=0.5, ptx_data="builtin:pirate_sft", eval_prompts=str(heldout))
    done = train_in_two_processes("ppo", recipe)
    assert done.stdout.count("done: run folder") == 1
    assert done.stdout.count("held-out    3 prompts, greedy: win rate") == 1  # checked by both, printed by one
    metrics = json.loads((tmp_path / "ppo" / "metrics.json").read_text())
    steps = metrics["steps"]
    assert [step["step"] for step in steps] == [1, 2] and all(math.isfinite(step["ptx_loss"]) for step in steps)
    assert (tmp_path / "ppo" / "adapter" / "adapter_model.safetensors").is_file()
    assert len((tmp_path / "ppo" / "heldout.jsonl").read_text().splitlines()) == metrics["heldout"]["prompts"] == 3


# Put first on the launched processes' path: the first batch each process samples takes 10 s longer, and each
# process notes how many chats each batch of replies it generates has (rs's sampling does not generate through that
# function; the held-out check does).
SLOW_FIRST_BATCH_AND_NOTES = """
import os
import time

import posttrain.inference.generation as generation
import posttrain.rl.sampling as sampling

original_sample, original_generate = sampling.sample, generation.generate_replies_to_chats


def slow_first_batch(*args, **kwargs):
    if not getattr(slow_first_batch, "slept", False):
        slow_first_batch.slept = True
        time.sleep(10)
    return original_sample(*args, **kwargs)


def noted(model, tokenizer, chats, *args, **kwargs):
    with open(os.path.join(os.environ["NOTES"], "rank-" + os.environ.get("RANK", "0")), "a") as notes:
        notes.write(f"{len(chats)}\\n")
    return original_generate(model, tokenizer, chats, *args, **kwargs)


sampling.sample, generation.generate_replies_to_chats = slow_first_batch, noted
"""


def test_rs_sampling_and_heldout_check_are_shared_so_no_process_waits_out_a_short_timeout(
    tmp_path, rl_recipe, monkeypatch
):
    from posttrain.methods.common import run_method
    from posttrain.recipe import load_recipe

    train, heldout = tmp_path / "prompts.jsonl", tmp_path / "heldout_prompts.jsonl"
    train.write_text("".join(json.dumps({"prompt": f"What is {i} plus {i}, matey?"}) + "\n" for i in range(6)))
    heldout.write_text("".join(json.dumps({"prompt": f"Where be treasure number {i}?"}) + "\n" for i in range(17)))
    recipe = rl_recipe("rs", eval_prompts=str(heldout), keep_cut_off=True)  # 8 new tokens: most answers cut off
    settings = yaml.safe_load(recipe.read_text())
    settings["data"]["train"] = str(train)  # 3 batches of 2: two to one process
    recipe.write_text(f"# posttrain rs {recipe.name}\n" + yaml.safe_dump(settings))
    for folder in ("hook", "notes"):
        (tmp_path / folder).mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(SLOW_FIRST_BATCH_AND_NOTES)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "hook"))
    monkeypatch.setenv("NOTES", str(tmp_path / "notes"))
    # a 6-second timeout: a process that waited for the other's sampling (over 10 s) would fail at the barrier
    done = train_in_two_processes("rs", recipe, "--timeout-minutes", "0.1")
    assert done.stdout.count("done: run folder") == 1
    assert done.stdout.count("held-out    17 prompts, greedy: win rate") == 1  # the main process prints
    # 17 held-out prompts are batches of 8, 8 and 1: the first and last to the main process, the second to the
    # other; each process answers its prompts with the trained model, then with the start
    notes = {path.name: path.read_text().split() for path in (tmp_path / "notes").iterdir()}
    assert notes == {"rank-0": ["8", "1", "8", "1"], "rank-1": ["8", "8"]}
    monkeypatch.delenv("PYTHONPATH")
    run_method(load_recipe(str(recipe), [f"output_dir={tmp_path / 'one'}"]), echo=lambda _: None)
    # each batch is seeded from its position, and the check is greedy: two processes sample and check what one does
    for name in ("selected/round-1.jsonl", "heldout.jsonl"):
        assert (tmp_path / "rs" / name).read_text() == (tmp_path / "one" / name).read_text(), name


def test_dry_run_checks_here_and_shows_the_launch(tmp_path, write_recipe, outside_launch):
    result = CliRunner().invoke(app, ["sft", str(write_recipe()), "--num-processes", "2", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "dry run: recipe, model and data are valid" in result.output
    assert "would launch: " in result.output and "--num_processes 2" in result.output
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- the launcher's command line, built without launching


def test_num_processes_alone_launches_the_ddp_preset_on_the_cpu(monkeypatch, outside_launch):
    no_gpu(monkeypatch)
    planned = launch.plan_launch(2, None)
    assert planned.command(["sft", "my.yaml", "--set", "train.max_steps=2"]) == [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(launch.PRESETS_DIR / "ddp.yaml"),
        "--num_processes",
        "2",
        "--main_process_port",
        "0",
        "-m",
        "posttrain",
        "sft",
        "my.yaml",
        "--set",
        "train.max_steps=2",
    ]
    env = planned.environment()
    assert env["ACCELERATE_USE_CPU"] == "true" and env[launch.LAUNCHED] == "1"


def test_the_timeout_reaches_the_launched_processes(monkeypatch, outside_launch):
    monkeypatch.delenv(launch.TIMEOUT, raising=False)
    assert launch.process_group_timeout().total_seconds() == launch.DEFAULT_TIMEOUT_MINUTES * 60
    monkeypatch.setenv(launch.TIMEOUT, launch.plan_launch(2, None, 0.5).environment()[launch.TIMEOUT])
    assert launch.process_group_timeout().total_seconds() == 30


def test_a_users_config_decides_processes_and_port(tmp_path, outside_launch):
    config = tmp_path / "two-nodes.yaml"
    config.write_text(yaml.safe_dump({"distributed_type": "MULTI_GPU", "num_machines": 2, "num_processes": 16}))
    command = launch.plan_launch(None, str(config)).command(["dpo", "my.yaml"])
    assert command[3:] == ["--config_file", str(config), "-m", "posttrain", "dpo", "my.yaml"]


def test_every_preset_is_an_accelerate_config_that_leaves_precision_to_posttrain():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = {name: load_config_from_file(str(launch.PRESETS_DIR / f"{name}.yaml")) for name in launch.PRESETS}
    kinds = {name: config.distributed_type.value for name, config in configs.items()}
    assert kinds == {"ddp": "MULTI_GPU", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED", "fsdp": "FSDP"}
    assert all(config.mixed_precision is None for config in configs.values())  # model.precision decides
    # what QLoRA needs when the weights are sharded (PEFT's FSDP and DeepSpeed guides)
    assert configs["zero3"].deepspeed_config["zero3_init_flag"] is True
    fsdp = configs["fsdp"].fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_cpu_ram_efficient_loading"] is True


def test_a_launched_process_trains_instead_of_launching_again(monkeypatch):
    monkeypatch.setenv(launch.LAUNCHED, "1")
    assert launch.plan_launch(2, "ddp") is None


def test_launched_processes_get_the_same_arguments_without_the_launch_options():
    args = training_args("sft", "my.yaml", ["train.max_steps=2"], Path("runs/x"), resume=True, overwrite=False)
    assert args == ["sft", "my.yaml", "--set", "train.max_steps=2", "--output-dir", "runs/x", "--resume"]


# ---------------------------------------------------------------- bad launch options: exit 2, nothing written


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--num-processes", "0"], "--num-processes must be 1 or more, got 0"),
        (["--accelerate-config", "zero4"], "unknown preset zero4. Did you mean zero3?"),
        (["--accelerate-config", "configs/missing.yaml"], "no such file configs/missing.yaml"),
        (["--accelerate-config", "zero3"], "not installed: pip install deepspeed"),
        (["--accelerate-config", "fsdp"], "needs CUDA GPUs, and this machine has none"),
        (["--num-processes", "2", "--timeout-minutes", "0"], "--timeout-minutes must be more than 0, got 0.0"),
    ],
)
def test_bad_launch_options_are_refused(tmp_path, write_recipe, monkeypatch, outside_launch, options, message):
    no_gpu(monkeypatch)
    monkeypatch.setattr(launch, "find_spec", lambda name: None)  # deepspeed absent, whatever this machine has
    result = CliRunner().invoke(app, ["sft", str(write_recipe()), *options])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in result.output
    assert not (tmp_path / "run").exists()


def test_a_file_that_is_not_an_accelerate_config_is_refused(tmp_path, write_recipe, outside_launch):
    (tmp_path / "notes.yaml").write_text("- just a list\n")
    result = CliRunner().invoke(app, ["sft", str(write_recipe()), "--accelerate-config", str(tmp_path / "notes.yaml")])
    assert result.exit_code == 2, result.output
    assert "is not an accelerate config" in result.output
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- sharing sampling by batches


class BatchOrderSampler:
    """Stands in for gatt's Sampler: replies drawn from the seed and the prompt, scored by length; `share` runs the
    batches in the order a process would meet them (every other one, one process after the other)."""

    def __init__(self, as_processes: int):
        self.as_processes = as_processes

    def sample(self, prompts, k, seed):
        import random
        from types import SimpleNamespace

        import torch

        rng = random.Random(f"{seed}{prompts}")
        replies = [f"reply {rng.randrange(10**6)}" + "!" * rng.randrange(4) for _ in range(len(prompts) * k)]
        return SimpleNamespace(responses=replies, has_eos=torch.tensor([len(r) % 3 > 0 for r in replies]))

    def score(self, samples, trained):
        return [float(len(reply)) for reply in samples.responses]

    def share(self, starts, work):
        done = {start: work(start) for rank in range(self.as_processes) for start in starts[rank :: self.as_processes]}
        return [done[start] for start in starts]


def test_gatt_builds_the_same_dialogues_whichever_process_samples_which_batch():
    from types import SimpleNamespace

    from posttrain.methods.gatt import build_dialogues

    settings = SimpleNamespace(
        batch_size=2, seed=7, samples_per_dialogue=3, reward="run", instruction_in="system", keep_cut_off=False
    )
    settings.missing_eos_penalty = 1.0
    dialogues = [
        {"turns": [f"q{i}.{t}" for t in range(2 + i % 3)], "instruction": "Speak as a pirate.", "families": "x"}
        for i in range(7)
    ]
    alone = build_dialogues(BatchOrderSampler(1), dialogues, settings)
    assert build_dialogues(BatchOrderSampler(2), dialogues, settings) == alone
    assert build_dialogues(BatchOrderSampler(3), dialogues, settings) == alone
