"""`posttrain eval`: reward accuracy, win-rate with a bootstrap interval, perplexity; one JSON report per call."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.evaluation.accuracy import length_bias
from posttrain.evaluation.winrate import bootstrap_interval, winner


def evaluate(*args):
    return CliRunner().invoke(app, ["eval", *[str(a) for a in args]])


def report_of(result) -> dict:
    assert result.exit_code == 0, result.output
    path = result.output.strip().splitlines()[-1].removeprefix("report: ")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def reversed_reward_run(reward_run, tmp_path_factory):
    """The trained reward run with its score head negated: it prefers exactly what the original rejects."""
    folder = tmp_path_factory.mktemp("runs") / "reversed"
    shutil.copytree(reward_run, folder)
    weights_file = folder / "adapter" / "adapter_model.safetensors"
    weights = load_file(weights_file)
    weights["base_model.model.score.weight"] = -weights["base_model.model.score.weight"]
    save_file(weights, weights_file)
    return folder


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default reports go to ./evals
    return tmp_path


# ---------------------------------------------------------------- accuracy


def test_accuracy_of_a_perfect_and_of_a_reversed_reward_model(reward_run, reversed_reward_run, reward_pairs, in_tmp):
    perfect = report_of(evaluate("accuracy", reward_run, "--data", reward_pairs))
    reversed_ = report_of(evaluate("accuracy", reversed_reward_run, "--data", reward_pairs))
    assert (perfect["accuracy"], perfect["pairs"]) == (1.0, 8)
    assert (reversed_["accuracy"], reversed_["pairs"]) == (0.0, 8)
    assert perfect["mean_score_chosen"] > perfect["mean_score_rejected"]


def test_length_bias_of_a_model_that_scores_length():
    # pairs (chosen, rejected) in tokens; the data picks the longer answer in 1 of 3, the model scores length itself
    chosen, rejected = [10, 4, 6], [5, 8, 9]
    bias = length_bias(chosen, rejected, [float(n) for n in chosen], [float(n) for n in rejected])
    assert bias["score_length_correlation"] == pytest.approx(1.0)
    assert bias["longer_preferred_by_data"] == pytest.approx(1 / 3)
    assert bias["longer_preferred_by_model"] == 1.0
    assert bias["mean_length_difference"] == pytest.approx((5 - 4 - 3) / 3)


def test_length_bias_leaves_out_pairs_of_equal_length_and_a_constant_score():
    bias = length_bias([3, 7], [3, 2], [1.0, 1.0], [1.0, 1.0])
    assert bias["pairs_of_unequal_length"] == 1 and bias["longer_preferred_by_data"] == 1.0
    assert bias["score_length_correlation"] is None  # undefined when every score is the same


def test_the_accuracy_report_measures_the_length_bias(reward_run, reward_pairs, in_tmp):
    from conftest import KIND_REPLY, RUDE_REPLY

    from posttrain.models.loading import load_tokenizer, resolve_model

    bias = report_of(evaluate("accuracy", reward_run, "--data", reward_pairs))["length_bias"]
    tokenizer = load_tokenizer(resolve_model(str(reward_run)), "llama2")
    kind, rude = (len(tokenizer(reply, add_special_tokens=False)["input_ids"]) for reply in (KIND_REPLY, RUDE_REPLY))
    assert kind > rude  # every pair: the longer, kind reply chosen (19 tokens to 16), and the run ranks all right
    assert bias["pairs_of_unequal_length"] == 8 and bias["mean_length_difference"] == kind - rude
    assert bias["longer_preferred_by_data"] == 1.0 and bias["longer_preferred_by_model"] == 1.0
    assert bias["score_length_correlation"] > 0  # the longer answers are the kind ones, scored higher


def test_the_terminal_shows_a_table_and_where_the_report_is(reward_run, reward_pairs, in_tmp):
    result = evaluate("accuracy", reward_run, "--data", reward_pairs)
    assert "accuracy" in result.output and "1.000" in result.output and "(preference, 8 pairs)" in result.output
    assert list((in_tmp / "evals").glob("accuracy-*.json"))


def test_a_report_is_never_written_over(reward_run, reward_pairs, in_tmp):
    for _ in range(2):
        report_of(evaluate("accuracy", reward_run, "--data", reward_pairs))
    reports = sorted((in_tmp / "evals").glob("accuracy-*.json"))
    assert len(reports) == 2
    before = reports[0].read_text()
    result = evaluate("accuracy", reward_run, "--data", reward_pairs, "--output", reports[0])
    assert result.exit_code == 2 and "eval never writes over a report" in result.output
    assert reports[0].read_text() == before


def test_accuracy_needs_a_reward_run(sft_run, reward_pairs, in_tmp):
    result = evaluate("accuracy", sft_run, "--data", reward_pairs)
    assert result.exit_code == 2 and "was trained by `posttrain sft`; it needs a reward run" in result.output


# ---------------------------------------------------------------- win-rate


def test_win_rate_of_a_model_against_itself_is_about_half(sft_run, reward_run, in_tmp):
    args = ["--prompts", "builtin:pirate_prompts", "--judge", reward_run, "--do-sample", "--max-new-tokens", "12"]
    # the tiny model never ends a reply: judge the cut-off replies with their turn closed
    report = report_of(evaluate("winrate", sft_run, sft_run, *args, "--truncated", "append_eos"))
    low, high = report["ci95"]
    assert report["pairs"] == 40 and report["wins_a"] + report["wins_b"] + report["ties"] == 40
    assert abs(report["win_rate_a"] - 0.5) < 0.2
    assert low < 0.5 < high
    assert report["judged"][0]["reply_a"] != report["judged"][0]["reply_b"]  # two independent samples


def test_a_cut_off_reply_never_gets_the_judges_score(sft_run, reward_run, in_tmp):
    args = ["--prompts", "builtin:pirate_prompts", "--judge", reward_run, "--do-sample", "--max-new-tokens", "6"]
    report = report_of(evaluate("winrate", sft_run, "tiny-llama2", *args, "--truncated-score", "-7.5"))
    cut_off = [(pair, side) for pair in report["judged"] for side in "ab" if not pair[f"finished_{side}"]]
    assert cut_off and report["cut_off_a"] + report["cut_off_b"] == len(cut_off)
    assert all(pair[f"score_{side}"] == -7.5 for pair, side in cut_off)


def test_winrate_refuses_an_unknown_truncation_rule(sft_run, reward_run, in_tmp):
    result = evaluate("winrate", sft_run, sft_run, "--prompts", "x", "--judge", reward_run, "--truncated", "drop")
    assert result.exit_code == 2 and "--truncated drop is not a choice" in result.output


def test_a_judge_on_another_tokenizer_is_refused(other_tokenizer_model, reward_run):
    other = other_tokenizer_model
    result = evaluate("winrate", other, "tiny-llama2", "--prompts", "builtin:pirate_prompts", "--judge", reward_run)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (
        "was trained on a base with another tokenizer than" in result.output
        and "(1024 vs 1026 tokens)" in result.output
    )


def test_identical_replies_tie_and_ties_count_half():
    assert winner("Arr.", "Arr.", 1.0, 1.0 + 1e-6, tie_margin=0.0) == "tie"
    assert winner("Arr.", "Go.", 0.30, 0.25, tie_margin=0.1) == "tie"
    assert winner("Arr.", "Go.", 0.9, 0.1, tie_margin=0.1) == "a"


def test_bootstrap_interval_is_seeded_and_brackets_the_win_rate():
    outcomes = [1.0] * 30 + [0.5] * 10 + [0.0] * 20  # win rate 7/12
    low, high = bootstrap_interval(outcomes, resamples=500, seed=3)
    assert low < 35 / 60 < high and high - low < 0.3
    assert bootstrap_interval(outcomes, resamples=500, seed=3) == [low, high]
    assert bootstrap_interval([1.0] * 5, resamples=100, seed=0) == [1.0, 1.0]


# ---------------------------------------------------------------- perplexity


def test_perplexity_is_exp_of_the_mean_token_loss(tmp_path, in_tmp):
    from posttrain.models.loading import load_run_model

    text = "Arr! The capital of Japan is Tokyo, matey. Fair winds!"
    (tmp_path / "text.txt").write_text(text)
    report = report_of(evaluate("perplexity", "tiny-llama2", "--data", tmp_path / "text.txt"))
    model, tokenizer = load_run_model("tiny-llama2")
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=ids).loss.item()  # transformers' own mean next-token loss
    assert report["perplexity"] == pytest.approx(math.exp(loss), rel=1e-4)
    assert report["tokens_scored"] == ids.shape[1] - 1


def test_sliding_windows_score_every_token_but_the_first_once(in_tmp):
    from posttrain.evaluation.perplexity import sliding_window_nll
    from posttrain.models.loading import load_run_model

    model, _ = load_run_model("tiny-llama2")
    ids = list(range(3, 103))
    whole, scored = sliding_window_nll(model, ids, window=200, stride=100)
    windowed, scored_in_windows = sliding_window_nll(model, ids, window=32, stride=8)
    assert scored == scored_in_windows == 99
    assert windowed == pytest.approx(whole, rel=0.2)  # less context per token, same order
