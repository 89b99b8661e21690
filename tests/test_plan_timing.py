"""posttrain plan's T4 time estimate: the tokens a recipe trains, scores and generates, and how its rows are counted
offline (the speeds themselves are assumptions, so only what they multiply is tested)."""

from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.plan.timing import (
    DECODE_STEPS_PER_S,
    FORWARD_PER_S,
    LOAD_S,
    TRAINED_PER_S,
    Work,
    data_rows,
    run_work,
    split_rows,
)
from posttrain.recipe import load_recipe


def test_sft_trains_steps_times_batch_times_accumulation_times_length():
    recipe = load_recipe("llama2-7b/sft-qlora-t4", ["train.max_steps=10", "data.eval_fraction=null"])
    assert run_work(recipe).trained == 10 * 2 * 8 * 1024


def test_an_epoch_is_counted_from_the_known_size_of_a_hub_split():
    recipe = load_recipe("llama2-7b/sft-qlora-t4", ["data.eval_fraction=null"])  # one epoch of no_robots' 9,500
    assert run_work(recipe).trained == 594 * 16 * 1024  # ceil(9500 / 16) steps


def test_dpo_trains_chosen_and_rejected_and_scores_them_with_the_reference():
    recipe = load_recipe("llama2-7b/dpo-qlora-t4", ["train.max_steps=10", "data.eval=null"])
    work = run_work(recipe)
    assert work.trained == 10 * 16 * 2 * 1024 and work.forward == 10 * 16 * 2 * 1024


def test_held_out_pairs_are_scored_once():
    base = ["train.max_steps=10"]
    without = run_work(load_recipe("llama2-7b/reward-qlora-t4", [*base, "data.eval=null"]))
    sliced = run_work(load_recipe("llama2-7b/reward-qlora-t4", [*base, "data.eval=Anthropic/hh-rlhf:test[:100]"]))
    assert sliced.forward - without.forward == 100 * 2 * 512 and sliced.trained == without.trained


def test_rs_generates_every_prompt_batch_in_every_round():
    sets = ["data.train=builtin:pirate_prompts", "rs.iterations=2", "rs.batch_size=4", "rs.max_new_tokens=100"]
    work = run_work(load_recipe("llama2-7b/rs-qlora-t4", sets))
    assert work.decode_steps == 2 * (40 // 4) * 100  # 40 built-in prompts
    assert work.forward == 2 * 40 * 4 * 768  # every sample scored, at full length


def test_ppo_generates_one_batch_per_step():
    work = run_work(load_recipe("llama2-7b/ppo-qlora-t4", ["ppo.steps=7", "ppo.max_new_tokens=50"]))
    assert work.decode_steps == 7 * 50


def test_seconds_are_the_work_over_the_assumed_speeds():
    work = Work(trained=TRAINED_PER_S * 10, forward=FORWARD_PER_S * 20, decode_steps=DECODE_STEPS_PER_S * 30, loads=2)
    assert work.seconds() == 10 + 20 + 30 + 2 * LOAD_S


def test_split_slices_and_max_rows_are_counted():
    assert split_rows("Anthropic/hh-rlhf:test[:500]") == 500
    assert split_rows("Anthropic/hh-rlhf:train[-10%:]") == 16_080
    assert split_rows("Anthropic/hh-rlhf:test[100:]") == 8_452
    capped = load_recipe("llama2-7b/ppo-qlora-t4", ["data.train=[{path: 'Anthropic/hh-rlhf:train', max_rows: 64}]"])
    assert data_rows(capped.data.train) == 64
    assert data_rows("builtin:pirate_sft") == 120
    assert split_rows("someone/unknown-set:train") is None


def test_plan_prints_the_time_as_an_estimate_from_assumed_speeds():
    result = CliRunner().invoke(app, ["plan", "llama2-7b/sft-qlora-t4", "--set", "train.max_steps=60"])
    assert result.exit_code == 0, result.output
    [line] = [line for line in result.output.splitlines() if line.startswith("time ")]
    # 60 x 16 x 1024 tokens trained at 250/s, 2% of 9,500 rows x 1024 scored at 1,500/s, one load: 4,182 s
    assert "about 1 h 10 min on a T4, an estimate" in line
    assert "assumed T4 speeds" in result.output and "not measured" in result.output


def test_plan_says_when_an_epoch_cannot_be_counted_offline():
    sets = ["--set", "data.train=someone/unknown-set:train"]
    result = CliRunner().invoke(app, ["plan", "llama2-7b/sft-qlora-t4", *sets])
    assert "time        unknown offline" in result.output and "train.max_steps" in result.output
