"""benchmarks/gpu_check.py end to end in its CPU mode (--tiny): the plumbing of the GPU acceptance check, so the first
task that has a GPU spends its minutes on the GPU, not on the script; then, on their own, what makes it pass, its
version gate, its T4 emulation, and the plain TRL side of its speed rows. No GPU figure is produced here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "gpu_check.py"
METHODS = {"sft", "reward", "dpo", "orpo", "rs", "ppo"}


@pytest.fixture(scope="module")
def check(tmp_path_factory) -> tuple[dict, str]:
    out, work = tmp_path_factory.mktemp("gpu-check"), tmp_path_factory.mktemp("gpu-check-work")
    command = [sys.executable, str(SCRIPT), "--tiny", "--output", str(out), "--work", str(work)]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=os.environ | {"CUDA_VISIBLE_DEVICES": ""}
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def test_every_training_method_has_a_row_in_the_json_and_the_markdown(check):
    report, markdown = check
    rows = {row["method"]: row for row in report["methods"]}
    assert set(rows) >= METHODS
    for method, row in rows.items():
        assert row["exit_code"] == 0, row.get("error")
        assert f"| tiny-llama2 | {method} | 0 |" in markdown
        assert row["predicted_gib"] is not None  # posttrain plan answered for the same recipe


def test_without_a_gpu_it_says_so_and_writes_no_memory_figure(check):
    report, markdown = check
    assert "no GPU" in report["machine"] and "no GPU" in markdown
    assert report["cap_gib"] is None
    assert all(row["peak_gib"] is None for row in report["methods"] + report["use"])
    # the two-GPU section is skipped, and the report says why, without counting it as passed
    assert report["two_gpus"]["skipped"].startswith("this machine has no GPU; the section needs 2")
    assert "**Skipped**: this machine has no GPU" in markdown and "not passed" in markdown


def test_generate_merge_and_eval_run_on_the_trained_runs(check):
    report, _ = check
    commands = {row["command_name"]: row for row in report["use"]}
    assert set(commands) == {"generate", "merge", "eval accuracy", "eval winrate", "eval perplexity"}
    assert all(row["exit_code"] == 0 for row in commands.values()), [r.get("error") for r in commands.values()]
    assert commands["generate"]["result"]["rows"] == 4
    accuracy = commands["eval accuracy"]["result"]  # the script's 16 preference pairs, each right or wrong
    assert accuracy["pairs"] == 16 and accuracy["accuracy"] * 16 == pytest.approx(round(accuracy["accuracy"] * 16))


def test_posttrain_and_plain_trl_are_both_timed_and_ppo_resume_repeats_the_run(check):
    report, _ = check
    assert {row["method"] for row in report["speed"]} == {"sft", "dpo"}
    assert all(row["posttrain_s_per_step"] and row["trl_s_per_step"] for row in report["speed"])
    assert report["ppo_resume"]["reproduced"] and report["ppo_resume"]["max_relative_difference"] == 0
    assert report["all_passed"]


# ---------------------------------------------------------------- what passes, without running the check

sys.path.insert(0, str(SCRIPT.parent))


def passing_report() -> dict:
    """A report every criterion of passed() accepts: the shape gpu_check.py writes."""
    method = {"model": "m", "method": "sft", "command": "posttrain sft r.yaml", "exit_code": 0}
    method |= {"losses": [2.1, 1.9, 1.7], "fp16_skipped": 0, "optimizer_steps": 10}
    speed = [{"method": m, "posttrain_s_per_step": 0.5, "trl_s_per_step": 0.6} for m in ("sft", "dpo")]
    use = [{"command": "posttrain generate", "exit_code": 0}]
    return {"methods": [method], "use": use, "speed": speed, "ppo_resume": {"reproduced": True}}


def test_passed_accepts_a_report_that_meets_every_criterion():
    from gpu_check_report import passed

    assert passed(passing_report())


def test_passed_refuses_a_run_whose_fp16_scaler_skipped_more_than_a_tenth_of_its_steps():
    from gpu_check_report import failures, passed

    report = passing_report()
    report["methods"][0]["fp16_skipped"] = 2  # of 10
    assert not passed(report)
    assert failures(report) == ["m sft: fp16 skipped 2 of 10 optimizer steps"]


def test_passed_refuses_a_run_that_logged_a_nan_loss():
    from gpu_check_report import passed

    report = passing_report()
    report["methods"][0]["losses"] = [2.1, float("nan"), 1.7]
    assert not passed(report)


def test_passed_refuses_a_check_without_both_speed_rows():
    from gpu_check_report import passed

    report = passing_report()
    report["speed"] = report["speed"][:1]
    assert not passed(report)
    report["speed"] = []
    assert not passed(report)


# ---------------------------------------------------------------- the two-GPU section, without two GPUs


def test_the_two_gpu_section_runs_ddp_and_fsdp_on_two_gpus_and_deepspeed_only_where_installed():
    from gpu_check_two_gpus import plan

    assert plan(2, deepspeed=False) == {
        "presets": ["ddp", "fsdp"],
        "not_run": {"zero2": "not installed (no deepspeed)", "zero3": "not installed (no deepspeed)"},
    }
    assert plan(4, deepspeed=True) == {"presets": ["ddp", "fsdp", "zero2", "zero3"], "not_run": {}}
    stand_in = plan(0, deepspeed=True, cpu_stand_in=True)  # --two-processes-on-cpu: DeepSpeed needs CUDA
    assert stand_in["presets"] == ["ddp", "fsdp"] and set(stand_in["not_run"]) == {"zero2", "zero3"}


@pytest.mark.parametrize("gpus, have", [(0, "no GPU"), (1, "1 GPU")])
def test_with_fewer_than_two_gpus_the_section_is_skipped_and_says_why_which_is_not_a_pass(gpus, have):
    from gpu_check_report import failures
    from gpu_check_two_gpus import markdown, plan

    skipped = plan(gpus, deepspeed=True)
    why = f"this machine has {have}; the section needs 2 (skipped, not passed: nothing was checked)"
    assert skipped == {"skipped": why}
    assert f"**Skipped**: {why}." in markdown(skipped)
    assert failures(passing_report() | {"two_gpus": skipped}) == []  # the one-GPU check still passes on one GPU


ONE_PROCESS = [7.2, 7.16, 7.24, 7.03, 7.23, 7.16, 7.17, 7.2]


def two_gpu_section(**layouts) -> dict:
    """The section as gpu_check_two_gpus.section writes it: one process, then each layout's row (fields overridden)."""
    runs = [{"layout": "one process", "processes": 1, "exit_code": 0, "losses": ONE_PROCESS}]
    for layout, fields in layouts.items():
        runs.append({"layout": layout, "processes": 2, "exit_code": 0, "losses": ONE_PROCESS} | fields)
    return {"loss_rtol": 1e-3, "steps": 8, "global_batch": 4, "precision": "fp16", "runs": runs, "not_run": {}}


def test_a_two_process_run_passes_within_the_loss_tolerance_of_one_process_and_fails_beyond_it():
    from gpu_check_two_gpus import failures

    within = [loss * (1 + 0.99e-3) for loss in ONE_PROCESS]
    assert failures(two_gpu_section(ddp={"losses": within}, fsdp={})) == []
    beyond = ONE_PROCESS[:7] + [ONE_PROCESS[7] * (1 + 1.01e-3)]
    (only,) = failures(two_gpu_section(ddp={}, fsdp={"losses": beyond}))
    assert only.startswith("two GPUs, fsdp: losses differ from one process's by up to 1.01e-03 relative")


@pytest.mark.parametrize(
    "fields, says",
    [
        ({"exit_code": 1, "error": "NCCL error"}, "exited 1: NCCL error"),
        ({"exit_code": None, "error": "not started"}, "exited None"),
        ({"losses": ONE_PROCESS[:7]}, "logged 7 losses, not one for each of the 8 steps"),
        ({"losses": ONE_PROCESS[:7] + [float("nan")]}, "a loss that is 0 or not a finite number"),
        ({"losses": [0.0] * 8}, "a loss that is 0 or not a finite number"),
    ],
)
def test_a_two_process_run_that_failed_or_logged_no_usable_loss_fails_the_section(fields, says):
    from gpu_check_two_gpus import failures

    (only,) = failures(two_gpu_section(ddp={}, fsdp=fields))
    assert only.startswith("two GPUs, fsdp: ") and says in only


def test_without_a_one_process_reference_the_two_process_runs_cannot_pass():
    from gpu_check_report import passed
    from gpu_check_two_gpus import failures

    section = two_gpu_section(ddp={})
    section["runs"][0] |= {"exit_code": 1, "error": "out of memory"}
    assert failures(section)[-1] == "two GPUs: no one-process losses to compare the two-process runs with"
    assert not passed(passing_report() | {"two_gpus": section})


def test_the_section_records_each_runs_difference_and_the_presets_it_did_not_run(tmp_path, monkeypatch):
    import gpu_check_two_gpus

    def fake_train(folder, preset, gpu, python_path, deadline):
        losses = ONE_PROCESS if preset is None else [loss * 1.0005 for loss in ONE_PROCESS]
        return {"layout": preset or "one process", "processes": 2 if preset else 1, "exit_code": 0, "losses": losses}

    monkeypatch.setattr(gpu_check_two_gpus, "train", fake_train)
    monkeypatch.setattr(gpu_check_two_gpus, "find_spec", lambda name: None)  # no deepspeed
    section = gpu_check_two_gpus.section(tmp_path, 2, False, [], float("inf"))
    assert [row["layout"] for row in section["runs"]] == ["one process", "ddp", "fsdp"]
    differences = [row.get("largest_relative_difference") for row in section["runs"]]
    assert differences == [None, pytest.approx(5e-4), pytest.approx(5e-4)]
    lines = "\n".join(gpu_check_two_gpus.markdown(section))
    assert (
        "| zero2 | 2 | not run: not installed (no deepspeed) |" in lines and gpu_check_two_gpus.failures(section) == []
    )


def test_a_shipped_recipe_that_does_not_load_fails_its_method_instead_of_falling_back(tmp_path, monkeypatch):
    """The 7B rows run the shipped llama2-7b/*-qlora-t4 recipes; one that stops loading (an unknown key on an older
    transformers) is that method's failure, never a quiet switch to the small recipe."""
    from gpu_check import train_methods

    import posttrain.recipe
    from posttrain.errors import UserError

    def broken(ref, overrides=(), method=None):
        raise UserError(f"{ref}: unknown recipe key train.activation_checkpointing")

    monkeypatch.setattr(posttrain.recipe, "load_recipe", broken)
    rows = train_methods("llama2-7b shape, 4 layers", str(tmp_path / "model"), tmp_path, {}, 3, False, {})
    assert {row["method"] for row in rows} >= METHODS
    assert all(row["exit_code"] is None and "does not load" in row["error"] for row in rows)


def test_plain_trl_sft_runs_with_posttrains_settings_but_for_the_listed_fields(tmp_path, monkeypatch):
    """The speed comparison's two sides: posttrain's SFTConfig (built as `posttrain sft` builds it, defaults and
    `auto` values settled) and the plain TRL one from that run's recipe.yaml are equal in every field but DIFFERS."""
    import yaml
    from gpu_check_runs import small_recipe, write_data
    from gpu_check_speed import DIFFERS, plain_trl_config

    from posttrain.methods import sft
    from posttrain.methods.common import start_run
    from posttrain.recipe import load_recipe

    data = write_data(tmp_path / "data")
    recipe = small_recipe("sft", "tiny-llama2", tmp_path, data["sft"], "base", steps=2, gpu=False)
    for key in ("activation_checkpointing", "report_to", "logging_steps", "save_strategy"):
        del recipe["train"][key]  # posttrain's defaults and its `auto` then decide, as in the shipped recipes
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(recipe))
    stage = sft.prepare(load_recipe(str(tmp_path / "sft.yaml")), echo=lambda _: None)
    start_run(stage, resume=False, overwrite=True)  # writes the run's recipe.yaml
    stage.run.release()
    monkeypatch.setattr(sft, "trl_trainer", lambda cls, config, stage, **extra: config)  # the config, no model
    ours = sft.build_trainer(stage).to_dict()
    plain = plain_trl_config("sft", stage.run.path, tmp_path / "plain").to_dict()
    assert ours["padding_free"] and ours["assistant_only_loss"]  # the settings the comparison is about
    assert {key for key in ours if ours[key] != plain.get(key)} - set(DIFFERS) == set()


def test_plain_trl_dpo_runs_with_posttrains_settings_but_for_the_listed_fields(tmp_path, monkeypatch):
    import yaml
    from gpu_check_runs import small_recipe, write_data
    from gpu_check_speed import DIFFERS, plain_trl_config

    from posttrain.methods import dpo
    from posttrain.methods.common import start_run
    from posttrain.recipe import load_recipe

    class Built(Exception):
        """Raised with posttrain's DPOConfig instead of building the trainer."""

    def built(cls, config, stage, **extra):
        raise Built(config)

    data = write_data(tmp_path / "data")
    recipe = small_recipe("dpo", "tiny-llama2", tmp_path, data["pairs"], "base", steps=2, gpu=False)
    for key in ("activation_checkpointing", "report_to", "logging_steps", "save_strategy"):
        del recipe["train"][key]
    (tmp_path / "dpo.yaml").write_text(yaml.safe_dump(recipe))
    stage = dpo.prepare(load_recipe(str(tmp_path / "dpo.yaml")), echo=lambda _: None)
    start_run(stage, resume=False, overwrite=True)
    stage.run.release()
    monkeypatch.setattr(dpo, "trl_trainer", built)
    with pytest.raises(Built) as config:
        dpo.train(stage, resume=False)
    ours = config.value.args[0].to_dict()
    plain = plain_trl_config("dpo", stage.run.path, tmp_path / "plain").to_dict()
    assert {key for key in ours if ours[key] != plain.get(key)} - set(DIFFERS) == set()


# ---------------------------------------------------------------- the version gate, on fake distributions


def fake_site(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """An installed distribution as importlib.metadata finds it (what pip leaves in site-packages)."""
    for old in folder.glob(f"{name}-*.dist-info"):
        for file in old.iterdir():
            file.unlink()
        old.rmdir()
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"] + [
        f"Requires-Dist: {r}" for r in requires
    ]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


@pytest.fixture
def site(tmp_path, monkeypatch) -> Path:
    import importlib

    folder = tmp_path / "site"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    importlib.invalidate_caches()
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = ["ptfake-lib>=2.0,<3", "ptfake-data>=1.0"]\n')
    return folder


def test_gate_stops_naming_package_found_and_needed_versions_when_no_wheel_is_carried(site):
    from gpu_check_gate import GateError, gate

    fake_site(site, "ptfake_lib", "1.5")
    fake_site(site, "ptfake_data", "1.0")
    with pytest.raises(GateError, match=r"ptfake-lib: found 1\.5, needed >=2\.0,<3 \(by pyproject\.toml\)"):
        gate(site.parent / "pyproject.toml", None, install=lambda wheels: pytest.fail("nothing to install"))


def test_gate_installs_the_carried_wheel_with_upgrade_when_below_the_floor(site, monkeypatch):
    import subprocess

    import gpu_check_gate

    fake_site(site, "ptfake_lib", "1.5")
    fake_site(site, "ptfake_data", "1.0")
    wheels = site.parent / "wheels"
    wheels.mkdir()
    for name in ("ptfake_lib-2.1-py3-none-any.whl", "ptfake_lib-1.4-py3-none-any.whl", "other-9.0-py3-none-any.whl"):
        (wheels / name).write_bytes(b"")
    commands = []

    def pip(command, **kwargs):  # what pip would leave behind
        commands.append(command)
        fake_site(site, "ptfake_lib", "2.1")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(gpu_check_gate.subprocess, "run", pip)
    found = gpu_check_gate.gate(site.parent / "pyproject.toml", wheels)
    assert len(commands) == 1 and "--upgrade" in commands[0] and "--no-index" in commands[0]
    assert commands[0][-1] == str(wheels / "ptfake_lib-2.1-py3-none-any.whl")  # only the wheel that meets the floor
    assert found["versions"] == {"ptfake-lib": "2.1", "ptfake-data": "1.0"}
    assert found["installed_from_wheels"] == ["ptfake_lib-2.1-py3-none-any.whl"]


def test_gate_can_install_into_a_folder_that_then_comes_first_on_sys_path(site, monkeypatch):
    """--install-into: for a Python environment that is not writable; the old version stays where it was."""
    import subprocess
    from functools import partial

    import gpu_check_gate

    fake_site(site, "ptfake_lib", "1.5")
    fake_site(site, "ptfake_data", "1.0")
    wheels, target = site.parent / "wheels", site.parent / "target"
    wheels.mkdir()
    (wheels / "ptfake_lib-2.1-py3-none-any.whl").write_bytes(b"")
    monkeypatch.setattr(sys, "path", list(sys.path))  # restored after the test

    def pip(command, **kwargs):
        assert command[command.index("--target") + 1] == str(target)
        fake_site(target, "ptfake_lib", "2.1")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(gpu_check_gate.subprocess, "run", pip)
    install = partial(gpu_check_gate.pip_install, target=target)
    found = gpu_check_gate.gate(site.parent / "pyproject.toml", wheels, install)
    assert sys.path[0] == str(target)
    assert found["versions"]["ptfake-lib"] == "2.1"
    assert (site / "ptfake_lib-1.5.dist-info").is_dir()


def test_gate_checks_what_a_dependency_itself_requires(site):
    """datasets is carried as a wheel installed without its dependencies: its Requires-Dist must hold too."""
    from gpu_check_gate import GateError, gate

    fake_site(site, "ptfake_lib", "2.0")
    fake_site(site, "ptfake_data", "1.0", requires=("ptfake-arrow>=24", "ptfake-never; python_version < '3'"))
    fake_site(site, "ptfake_arrow", "20.0")
    with pytest.raises(GateError, match=r"ptfake-arrow: found 20\.0, needed >=24 \(by ptfake-data 1\.0\)") as err:
        gate(site.parent / "pyproject.toml", None)
    assert "ptfake-never" not in str(err.value)  # a requirement whose marker does not hold here is not one


# ---------------------------------------------------------------- the T4's memory reaches posttrain's plan


H200 = ("cuda", "NVIDIA H200", (9, 0))


@pytest.mark.parametrize(("memory", "checkpointed"), [("14.5", True), ("141", False)])
def test_auto_checkpointing_plans_for_the_gpu_memory_variable(monkeypatch, memory, checkpointed):
    """gpu_check.py caps a large GPU at a T4's 14.5 GiB; `auto` must decide as on a T4 (7B sft needs ~17 GiB
    without checkpointing), not from the whole GPU's memory."""
    from posttrain.plan.fit import resolve_auto_checkpointing
    from posttrain.precision import Hardware
    from posttrain.recipe import load_recipe

    monkeypatch.setenv("POSTTRAIN_GPU_MEMORY_GIB", memory)
    recipe = load_recipe("llama2-7b/sft-qlora-t4", ["train.activation_checkpointing=auto"])
    line = resolve_auto_checkpointing(recipe, Hardware(*H200), "fp16")
    assert recipe.train["activation_checkpointing"] is checkpointed
    assert f"of {float(memory):.3g} GiB GPU memory" in line[0]


@pytest.mark.parametrize(("memory", "warned"), [("14.5", True), ("141", False)])
def test_the_too_big_warning_plans_for_the_gpu_memory_variable(monkeypatch, memory, warned):
    from posttrain.plan import fit
    from posttrain.precision import Hardware
    from posttrain.recipe import load_recipe

    monkeypatch.setenv("POSTTRAIN_GPU_MEMORY_GIB", memory)
    monkeypatch.setattr(fit, "detect_hardware", lambda: Hardware(*H200))
    recipe = load_recipe("llama2-7b/sft-qlora-t4", ["train.activation_checkpointing=false"])
    said = []
    fit.warn_if_too_big(recipe, said.append)
    assert bool(said) is warned, said


def test_t4_emulation_makes_posttrain_choose_fp16_without_flash_attention_under_the_cap(monkeypatch):
    """What gpu_check.py does to a large GPU before the first command, with CUDA's answers faked on this CPU: the
    automatic precision of every command (generate and eval included) becomes fp16, flash SDPA is off, and the
    plan's device memory is the cap."""
    import types

    import torch
    from gpu_check import T4_USABLE_GIB, emulate_t4

    from posttrain.plan.fit import device_memory_gib
    from posttrain.precision import choose_precision, detect_hardware

    fractions = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=141e9))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device=None: fractions.append(f))
    monkeypatch.delenv("POSTTRAIN_GPU_MEMORY_GIB", raising=False)  # restored after the test
    flash = torch.backends.cuda.flash_sdp_enabled()
    assert choose_precision("auto", detect_hardware()) == "bf16"  # the large GPU as it is
    try:
        emulate_t4()
        assert choose_precision("auto", detect_hardware()) == "fp16"
        assert not torch.backends.cuda.flash_sdp_enabled()
        assert device_memory_gib(detect_hardware()) == T4_USABLE_GIB
        assert fractions == [pytest.approx(T4_USABLE_GIB * 2**30 / 141e9)]
    finally:
        torch.backends.cuda.enable_flash_sdp(flash)
