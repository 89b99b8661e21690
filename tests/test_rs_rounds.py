"""What a rejection-sampling round fine-tunes on: never an answer cut off at max_new_tokens (such prompts are
left out and counted), and answers sampled and scored under the precision the runs were trained at."""

import json
from dataclasses import replace

import torch
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.methods import rs
from posttrain.recipe import load_recipe


def candidate(response: str, score: float, finished: bool) -> dict:
    return {"response": response, "score": score, "finished": finished}


def test_a_prompt_whose_every_answer_was_cut_off_keeps_none():
    prompts = [{"prompt": [{"role": "user", "content": q}]} for q in ("a?", "b?")]
    groups = [
        [candidate("cut", 5.0, False), candidate("off", 4.0, False)],
        [candidate("cut", 5.0, False), candidate("done", 0.5, True)],
    ]
    selected = rs.select_best(prompts, groups, missing_eos_penalty=10.0)
    assert [row["response"] for row in selected] == [None, "done"]
    assert selected[0]["candidates"] == groups[0]  # still written, with every candidate's score
    kept = rs.select_best(prompts, groups, missing_eos_penalty=10.0, keep_cut_off=True)
    assert [row["response"] for row in kept] == ["cut", "done"]  # rs.keep_cut_off: for models that never stop


def test_cut_off_prompts_are_counted_per_round_and_left_out_of_the_fine_tuning(rl_recipe, monkeypatch):
    fine_tuned = []

    def sample_and_select(stage, prompts, rewards, adapter, number):
        groups = [[candidate("Arr.", 1.0, i % 2 == 0), candidate("Arr arr", 2.0, False)] for i in range(len(prompts))]
        return rs.select_best(prompts, groups, missing_eos_penalty=1.0)

    def fine_tune(stage, selected, adapter, folder, scores):
        fine_tuned.append(sum(row["response"] is not None for row in selected))
        return original_fine_tune(stage, selected, adapter, folder, scores)

    original_fine_tune = rs.fine_tune
    monkeypatch.setattr(rs, "sample_and_select", sample_and_select)
    monkeypatch.setattr(rs, "fine_tune", fine_tune)
    path = rl_recipe("rs", iterations=1)
    result = CliRunner().invoke(app, ["rs", str(path)])
    assert result.exit_code == 0, result.output
    prompts = len(rs.prepare(load_recipe(str(path)), echo=lambda _: None).data.prompts)
    metrics = json.loads((path.parent / "rs" / "metrics.json").read_text())
    assert metrics["rounds"][0]["cut_off_prompts"] == prompts // 2 and fine_tuned == [prompts - prompts // 2]
    assert metrics["rounds"][0]["best_score"] == 1.0  # the finished answers only
    assert f"{prompts // 2} prompts left out (all 2 answers cut off)" in result.output


def test_a_round_samples_and_scores_under_the_training_autocast(rl_recipe):
    """In bf16 (fp16 on a T4) SFT and reward training run under autocast, so sampling and scoring must too."""
    recipe = load_recipe(str(rl_recipe("rs")))
    stage = rs.prepare(recipe)
    prompts, rewards = stage.data.prompts, stage.data.rewards
    seen = []
    hook = torch.nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: seen.append(torch.is_autocast_enabled("cpu"))
    )
    try:
        selected = rs.sample_and_select(replace(stage, precision="bf16"), prompts[:2], rewards, stage.adapter, 1)
    finally:
        hook.remove()
    assert seen and all(seen)
    assert all(isinstance(c["score"], float) for row in selected for c in row["candidates"])
