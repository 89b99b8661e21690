"""posttrain distill on tiny-llama2: the preprompted answer is kept exactly where it scores higher, both answers are
scored without the preprompt, the command runs end to end into a run that generate and merge load, and bad reward
runs exit 2."""

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.methods.distill import select, with_preprompt

torch.set_num_threads(1)


def answer(score: float, finished: bool = True) -> dict:
    return {"response": f"scored {score}", "score": score, "finished": finished}


def test_the_preprompted_answer_is_kept_exactly_where_it_scores_higher():
    prompts = [{"prompt": [{"role": "user", "content": q}], "risk_category": None} for q in "abcd"]
    original = [answer(0.5), answer(1.0), answer(-2.0), answer(0.0)]
    preprompted = [answer(0.6), answer(1.0), answer(-3.0), answer(2.0, finished=False)]
    kept = [row["kept"] for row in select(prompts, original, preprompted, "higher")]
    assert kept == [True, False, False, False]  # higher; a tie; lower; higher but cut off
    assert [row["kept"] for row in select(prompts, original, preprompted, "all")] == [True, True, True, False]
    assert select(prompts, original, preprompted, "higher", keep_cut_off=True)[3]["kept"]


def test_the_preprompt_goes_before_the_prompts_own_system_message():
    prompt = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert with_preprompt(prompt, "Be safe.")[0] == {"role": "system", "content": "Be safe.\n\nBe brief."}
    assert with_preprompt(prompt[1:], "Be safe.") == [{"role": "system", "content": "Be safe."}, prompt[1]]


def distill_recipe(tmp_path, reward, data="builtin:safety_prompts", **section):
    recipe = {
        "method": "distill",
        "model": {"name": "tiny-llama2", "quantization": "none"},
        "data": {"train": data, "max_length": 256},
        "distill": {"reward": str(reward), "max_new_tokens": 8, "batch_size": 8} | section,
        "train": {"max_steps": 2, "learning_rate": 1e-2, "activation_checkpointing": False, "report_to": "none"},
        "output_dir": str(tmp_path / "distill"),
    }
    path = tmp_path / "distill.yaml"
    path.write_text("# posttrain distill distill.yaml\n" + yaml.safe_dump(recipe))
    return path


def test_distill_runs_end_to_end_and_the_run_loads_in_generate_and_merge(tmp_path, sft_run, reward_run):
    path = distill_recipe(tmp_path, reward_run, keep="all", keep_cut_off=True)
    recipe = yaml.safe_load(path.read_text()) | {"model": {"name": str(sft_run), "quantization": "none"}}
    path.write_text("# posttrain distill distill.yaml\n" + yaml.safe_dump(recipe))
    result = CliRunner().invoke(app, ["distill", str(path)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "distill"
    selected = [json.loads(line) for line in (run / "distill" / "selected.jsonl").read_text().splitlines()]
    assert len(selected) == 24 and all(row["kept"] for row in selected)
    assert {row["risk_category"] for row in selected} == {None, "criminal", "harmful", "unqualified_advice"}
    assert all(row["prompt"][0]["role"] == "user" for row in selected)  # trained without the preprompt
    metrics = json.loads((run / "metrics.json").read_text())["distill"]
    assert metrics["kept_fraction"] == 1.0 and set(metrics["by_category"]) == {
        "none",
        "criminal",
        "harmful",
        "unqualified_advice",
    }
    mean = sum(row["original"]["score"] for row in selected) / 24
    assert metrics["mean_original_score"] == pytest.approx(mean)

    out = tmp_path / "answers.jsonl"
    args = ["generate", str(run), "--prompts", "builtin:pirate_heldout", "--output", str(out), "--max-new-tokens", "4"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert CliRunner().invoke(app, ["merge", str(run), "--output", str(tmp_path / "merged")]).exit_code == 0


def test_a_reply_is_rescored_as_rl_sampling_scores_it_and_the_preprompt_is_left_out(tmp_path, reward_run):
    from posttrain.methods import distill
    from posttrain.recipe import load_recipe
    from posttrain.rl.context_distillation import Sampler
    from posttrain.rl.sampling import reward_scores

    recipe = load_recipe(str(distill_recipe(tmp_path, reward_run, max_new_tokens=6, truncated="append_eos")))
    stage = distill.prepare(recipe)
    plain = [p["prompt"] for p in stage.data["prompts"][:3]]
    guided = [with_preprompt(p, distill.GENERIC) for p in plain]
    sampler = Sampler(stage, stage.data["rewards"], recipe.distill)
    samples = sampler.sample(guided, 1, seed=0)
    as_sampled = reward_scores(sampler.shared, samples, ["reward"], recipe.distill).tolist()
    assert sampler.score(samples, guided) == pytest.approx(as_sampled, abs=1e-5)  # same context: same scores
    assert sampler.score(samples, plain) != pytest.approx(as_sampled, abs=1e-3)  # scored without the preprompt


@pytest.mark.parametrize(
    ("reward", "message"),
    [("missing", "not found"), ("sft", "is not a reward run"), ("", "distill.reward is required")],
)
def test_a_missing_or_wrong_reward_run_exits_2(tmp_path, sft_run, reward, message):
    run = {"missing": tmp_path / "nothing-here", "sft": sft_run, "": ""}[reward]
    result = CliRunner().invoke(app, ["distill", str(distill_recipe(tmp_path, run))])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in result.output


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ({}, "raise it, or set distill.keep_cut_off: true."),
        ({"keep_cut_off": True}, "or set distill.truncated: append_eos, or distill.keep: all."),
        ({"keep_cut_off": True, "truncated": "append_eos"}, "No preprompted answer scored above the original"),
    ],
)
def test_a_build_that_kept_nothing_says_which_key_to_change(tmp_path, reward_run, section, says):
    from posttrain.recipe import load_recipe
    from posttrain.rl.context_distillation import why_none_kept

    assert says in why_none_kept(load_recipe(str(distill_recipe(tmp_path, reward_run, **section))))
