"""benchmarks/gpu_check.py end to end in its CPU mode (--tiny): the plumbing of the GPU acceptance check, so the first
task that has a GPU spends its minutes on the GPU, not on the script. No GPU figure is produced here."""

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


def test_generate_merge_and_eval_run_on_the_trained_runs(check):
    report, _ = check
    commands = {row["command_name"]: row for row in report["use"]}
    assert set(commands) == {"generate", "merge", "eval accuracy", "eval winrate", "eval perplexity"}
    assert all(row["exit_code"] == 0 for row in commands.values()), [r.get("error") for r in commands.values()]
    assert commands["generate"]["result"]["rows"] == 4
    assert 0 <= commands["eval accuracy"]["result"]["accuracy"] <= 1


def test_posttrain_and_plain_trl_are_both_timed_and_ppo_resume_repeats_the_run(check):
    report, _ = check
    assert {row["method"] for row in report["speed"]} == {"sft", "dpo"}
    assert all(row["posttrain_s_per_step"] and row["trl_s_per_step"] for row in report["speed"])
    assert report["ppo_resume"]["reproduced"] and report["ppo_resume"]["max_relative_difference"] == 0
    assert report["all_passed"]
