"""The held-out check at the end of ppo and rs (issue #19): the trained model against the one it started from, on
prompts the run did not train on, in metrics.json."""

import json

import pytest
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.methods import ppo
from posttrain.recipe import load_recipe

PER_MODEL = {"mean_score", "perplexity", "mean_tokens", "cut_off"}


@pytest.mark.parametrize("method", ["ppo", "rs"])
def test_the_run_reports_the_heldout_check_in_metrics(rl_recipe, tmp_path, method):
    result = CliRunner().invoke(app, [method, str(rl_recipe(method))])  # eval_prompts: builtin:pirate_heldout
    assert result.exit_code == 0, result.output
    heldout = json.loads((tmp_path / method / "metrics.json").read_text())["heldout"]
    assert heldout["prompts"] == 120 and heldout["max_new_tokens"] == 8
    low, high = heldout["win_rate_ci95"]
    assert 0 <= low <= heldout["win_rate"] <= high <= 1
    assert sum(heldout["wins_losses_ties"]) == 120
    for model in ("start", "trained"):
        assert set(heldout[model]) == PER_MODEL
        assert 0 <= heldout[model]["cut_off"] <= 1 and 0 < heldout[model]["mean_tokens"] <= 8
        assert heldout[model]["perplexity"] > 1
    assert (heldout["final_kl"] is None) == (method == "rs")  # rs measures no KL while training
    assert len(heldout["examples"]) == 3 and "answers" not in heldout
    assert "held-out    120 prompts, greedy: win rate" in result.output

    # every prompt's pair, in heldout.jsonl: the summary is made of these rows
    rows = [json.loads(line) for line in (tmp_path / method / "heldout.jsonl").read_text().splitlines()]
    assert [row["prompt"] for row in rows[:3]] == [example["prompt"] for example in heldout["examples"]]
    outcomes = [[row["winner"] for row in rows].count(who) for who in ("trained", "start", "tie")]
    assert outcomes == heldout["wins_losses_ties"]
    for model in ("start", "trained"):
        scores = [row[f"{model}_score"] for row in rows]
        assert sum(scores) / 120 == pytest.approx(heldout[model]["mean_score"])
        assert all(row[f"{model}_perplexity"] is None or row[f"{model}_perplexity"] > 1 for row in rows)


def test_heldout_prompts_that_are_also_training_prompts_are_left_out(rl_recipe):
    path = rl_recipe("ppo")
    recipe = load_recipe(str(path), ["data.train=builtin:pirate_heldout"])
    stage = ppo.prepare(recipe)
    assert stage.data.heldout == []
    assert "held-out    0 prompts from builtin:pirate_heldout (120 also training prompts: left out)" in "\n".join(
        stage.details
    )


def test_eval_prompts_null_skips_the_check(rl_recipe):
    stage = ppo.prepare(load_recipe(str(rl_recipe("ppo", eval_prompts=None))))
    assert stage.data.heldout == [] and "held-out    none (eval_prompts: null)" in stage.details
