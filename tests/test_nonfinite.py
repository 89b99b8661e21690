"""A run whose weights overflow stops at that step with what to change, and never saves the broken step."""

from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.errors import UserError
from posttrain.precision import check_weights_finite


def two_layers() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_one_value_that_is_inf_or_nan_in_a_trainable_weight_stops_the_run(bad):
    model = two_layers()
    with torch.no_grad():
        model[1].weight[2, 1] = bad
    with pytest.raises(
        UserError, match=r"^step 7: 1 trainable weights are no longer finite numbers \(first: 1.weight\)"
    ):
        check_weights_finite(model, 7, Path("run/checkpoints"))


def test_finite_trainable_weights_pass_the_check():
    model = two_layers()
    check_weights_finite(model, 1, Path("run/checkpoints"))  # raises nothing


def test_an_update_that_overflows_the_weights_stops_the_run_with_exit_2_and_saves_nothing(write_recipe, tmp_path):
    # 1e39 overflows fp32 weights on the first update (no warm-up): what an fp16 overflow does to a run on a T4
    path = write_recipe(train={"learning_rate": 1e39, "warmup_steps": 0, "max_steps": 3, "save_steps": 1})
    result = CliRunner().invoke(app, ["sft", str(path)])
    assert result.exit_code == 2, result.output
    assert "step 1:" in result.output and "no longer finite" in result.output and "learning rate" in result.output
    run = tmp_path / "run"
    assert not list((run / "checkpoints").glob("checkpoint-*"))  # the broken step was not saved
    assert not (run / "metrics.json").exists() and not (run / "adapter").exists()


def test_a_ppo_update_that_overflows_stops_the_run_with_exit_2(rl_recipe):
    path = rl_recipe("ppo", learning_rate=1e30)  # two updates: the second one from overflowed outputs
    result = CliRunner().invoke(app, ["ppo", str(path)])
    assert result.exit_code == 2, result.output
    assert "step 1:" in result.output and "no longer finite" in result.output


def test_a_finished_run_reports_the_updates_fp16_skipped(write_recipe, tmp_path):
    assert CliRunner().invoke(app, ["sft", str(write_recipe())]).exit_code == 0
    metrics = yaml.safe_load((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["fp16_skipped_steps"] == 0  # fp32 on a CPU: no loss scaler, nothing skipped
