"""`posttrain eval arena`: Bradley-Terry scores on the Elo scale with bootstrap intervals, from a reward-run judge
and from votes; answers cached per model and settings."""

import json
import math
import random

import pytest
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.errors import UserError
from posttrain.evaluation.arena import answers_file, judge_answers
from posttrain.evaluation.bradley_terry import leaderboard
from posttrain.evaluation.votes import parse_vote
from posttrain.inference.generation import GenerationSettings


def arena(*args):
    return CliRunner().invoke(app, ["eval", "arena", *[str(a) for a in args]])


def report_of(result) -> dict:
    assert result.exit_code == 0, result.output
    path = result.output.strip().splitlines()[-1].removeprefix("report: ")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def simulated(strengths: dict[str, float], games: int, seed: int = 0) -> list[tuple[str, str, str]]:
    """Battles between random pairs, won with the Elo-scale Bradley-Terry probability of the true strengths."""
    rng = random.Random(seed)
    battles = []
    for _ in range(games):
        a, b = rng.sample(sorted(strengths), 2)
        p_a = 1 / (1 + 10 ** ((strengths[b] - strengths[a]) / 400))
        battles.append((a, b, "a" if rng.random() < p_a else "b"))
    return battles


def by_model(board: dict) -> dict[str, dict]:
    return {row["model"]: row for row in board["models"]}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default reports and answers go to ./evals
    return tmp_path


# ---------------------------------------------------------------- Bradley-Terry


def test_bradley_terry_recovers_known_strengths_from_simulated_games():
    truth = {"strong": 1100.0, "middle": 1000.0, "weak": 900.0}  # gaps 0 / 100 / 200, mean 1000
    board = leaderboard(simulated(truth, games=6000), resamples=300, seed=0)
    rows = by_model(board)
    assert [row["model"] for row in board["models"]] == ["strong", "middle", "weak"]
    assert math.isclose(sum(row["score"] for row in board["models"]) / 3, 1000, abs_tol=1e-6)
    for name, true_score in truth.items():
        low, high = rows[name]["ci95"]
        assert abs(rows[name]["score"] - true_score) < 20
        assert low < rows[name]["score"] < high and 5 < high - low < 40
    assert board["well_posed"] and board["battles"] == 6000


def test_two_identical_players_have_intervals_covering_no_difference():
    rng = random.Random(1)
    battles = [("left", "right", rng.choice("ab")) for _ in range(400)]  # fair coin games
    rows = by_model(leaderboard(battles, resamples=300, seed=0))
    for row in rows.values():  # mean 1000 with two players: the difference is 2 * (score - 1000)
        assert row["ci95"][0] < 1000 < row["ci95"][1]
    assert abs(rows["left"]["score"] - rows["right"]["score"]) < 60


def test_ties_count_half_a_win_each_way():
    board = leaderboard([("p", "q", "a")] * 10 + [("p", "q", "tie")] * 10, resamples=50)
    rows = by_model(board)
    # p's share is (10 + 10/2) / 20 = 0.75, so its Elo-scale lead is 400 log10(0.75 / 0.25)
    assert math.isclose(rows["p"]["score"] - rows["q"]["score"], 400 * math.log10(3), abs_tol=0.1)
    assert board["win_rate"]["matrix"] == [[None, 0.75], [0.25, None]]
    assert (rows["p"]["wins"], rows["p"]["ties"], rows["q"]["losses"], rows["q"]["ties"]) == (10, 10, 10, 10)
    only_ties = by_model(leaderboard([("p", "q", "tie")] * 5, resamples=20))
    assert math.isclose(only_ties["p"]["score"], only_ties["q"]["score"], abs_tol=1e-6)


def test_an_undefeated_model_gets_a_finite_score_and_the_board_says_it_is_unbounded():
    board = leaderboard([("p", "q", "a")] * 8 + [("q", "r", "a"), ("r", "q", "a")], resamples=50)
    assert not board["well_posed"]
    assert all(math.isfinite(row["score"]) for row in board["models"]) and board["models"][0]["model"] == "p"


def test_the_interval_is_as_wide_as_the_normal_approximation_of_a_95_percent_interval():
    board = leaderboard([("p", "q", "a")] * 600 + [("p", "q", "b")] * 400, resamples=1000, seed=0)
    rows = by_model(board)
    # p won 60% of 1000 games: the Elo difference is 400 log10(0.6 / 0.4), each score half of it from 1000, and
    # the standard error of each score (the delta method on the win share) is sqrt(0.24 / 1000) * 400 / ln 10 / 0.24 / 2
    assert rows["p"]["score"] == pytest.approx(1000 + 200 * math.log10(1.5), abs=0.05)
    standard_error = math.sqrt(0.24 / 1000) * 400 / math.log(10) / 0.24 / 2
    low, high = rows["p"]["ci95"]
    assert high - low == pytest.approx(2 * 1.96 * standard_error, rel=0.1)  # 22.5 here; a 50% interval is 7.5


def test_the_bootstrap_is_seeded():
    battles = simulated({"x": 1050.0, "y": 1000.0}, games=200)
    assert leaderboard(battles, resamples=100, seed=4) == leaderboard(battles, resamples=100, seed=4)
    assert leaderboard(battles, resamples=100, seed=4) != leaderboard(battles, resamples=100, seed=5)


# ---------------------------------------------------------------- judged battles and answer files


def test_a_cut_off_answer_never_gets_the_judges_score(reward_run):
    prompts = [[{"role": "user", "content": "What is two and two?"}]]
    answers = {
        "cut": [{"text": "Arr, the answer is", "finished": False}],
        "done": [{"text": "Arr, the answer is", "finished": True}],
    }
    fixed = judge_answers(str(reward_run), prompts, answers, 8, -7.5, echo=lambda line: None)
    closed = judge_answers(str(reward_run), prompts, answers, 8, None, echo=lambda line: None)
    assert fixed["cut"] == [-7.5] and fixed["done"] == closed["done"] != [-7.5]
    assert closed["cut"] == closed["done"]  # append_eos: judged as if it had ended there


def test_other_generation_settings_never_share_an_answer_file(tmp_path):
    greedy = GenerationSettings(max_new_tokens=8)
    path = answers_file(tmp_path, "tiny-llama2", greedy, seed=0, chat_template="auto")
    assert path.parent == tmp_path and path.name.startswith("tiny-llama2-") and path.suffix == ".jsonl"
    assert answers_file(tmp_path, "tiny-llama2", greedy, seed=1, chat_template="auto") == path  # greedy: no seed
    others = [
        answers_file(tmp_path, "tiny-llama2", GenerationSettings(max_new_tokens=9), 0, "auto"),
        answers_file(tmp_path, "tiny-llama2", GenerationSettings(max_new_tokens=8, do_sample=True), 0, "auto"),
        answers_file(tmp_path, "tiny-llama2", greedy, 0, "chatml"),
    ]
    assert len({path, *others}) == 4


# ---------------------------------------------------------------- votes

VOTE = {
    "time": "2025-01-02T03:04:05Z",
    "prompt": "What is 2 plus 2?",
    "model_a": "pirate",
    "model_b": "base",
    "reply_a": "Arr, four!",
    "reply_b": "4",
    "winner": "a",
    "judge": "human",
}


def test_votes_alone_make_a_human_leaderboard_with_both_bad_as_a_tie(jsonl, in_tmp):
    rows = [VOTE] * 6 + [VOTE | {"winner": "b"}] * 2 + [VOTE | {"winner": "both_bad"}] * 2
    rows += [VOTE | {"model_b": "sft", "winner": "tie"}] * 2
    result = arena("--votes", jsonl(rows, "votes.jsonl"), "--bootstrap", "100")
    report = report_of(result)
    assert "votes.jsonl: 12 votes used (2 both bad, counted as ties)" in result.output
    [board] = report["leaderboards"]
    assert board["judge"] == "human" and board["kind"] == "votes" and board["battles"] == 12
    pirate = by_model(board)["pirate"]
    assert (pirate["wins"], pirate["losses"], pirate["ties"]) == (6, 2, 4)
    counts = {"rows": 12, "both_bad": 2, "unreadable": 0, "duplicates": 0, "without_id": 12}
    assert report["votes"] == [{"file": str(in_tmp / "votes.jsonl")} | counts | {"voters": {"(no login)": 12}}]
    assert "judge human (votes): 12 battles" in result.output
    report_file = result.output.strip().splitlines()[-1].removeprefix("report: ")
    assert (in_tmp / report_file).with_suffix(".png").is_file()


def test_a_bad_vote_row_is_named_by_file_and_line(jsonl, in_tmp):
    path = jsonl([VOTE, VOTE, VOTE | {"winner": "draw"}], "votes.jsonl")
    result = arena("--votes", path)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{path}:3: winner 'draw' is not one of a, b, tie, both_bad" in result.output


def test_a_line_cut_short_by_a_crash_is_skipped_and_counted(in_tmp):
    from posttrain.inference.arena_votes import VotesFile

    path = in_tmp / "votes.jsonl"
    path.write_text(json.dumps(VOTE) + "\n" + json.dumps(VOTE)[:40])  # the page died while writing the second
    VotesFile(path).append(VOTE)  # after a restart: a fresh line
    result = arena("--votes", path, "--bootstrap", "10")
    assert result.exit_code == 0, result.output
    assert (
        f"{path}: 2 votes used (0 both bad, counted as ties; lines cut short by a crash, skipped: 1)" in result.output
    )


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("[1, 2]", "not a JSON object but list"),
        (json.dumps({k: v for k, v in VOTE.items() if k != "reply_b"}), "the vote lacks reply_b"),
        (json.dumps(VOTE | {"model_b": "pirate"}), "model_a and model_b are both 'pirate'"),
        (json.dumps(VOTE | {"time": "yesterday"}), "time 'yesterday' is not an ISO-8601"),
        (json.dumps(VOTE | {"prompt": None}), "prompt must be a string, got null"),
    ],
)
def test_every_vote_row_is_checked(line, says):
    with pytest.raises(UserError, match=f"^votes.jsonl:7: {says}"):
        parse_vote(line, "votes.jsonl:7")


def test_models_need_prompts_and_a_judge(in_tmp):
    result = arena("tiny-llama2", "smollm2-135m", "--prompts", "builtin:pirate_prompts")
    assert result.exit_code == 2 and "give both" in result.output
    assert "two or more models" in arena("tiny-llama2", "--prompts", "p.jsonl", "--judge", "r").output
    assert "--votes FILE" in arena().output


def test_a_judge_on_another_tokenizer_is_refused_before_any_answer(other_tokenizer_model, reward_run, in_tmp):
    other = other_tokenizer_model
    result = arena("tiny-llama2", other, "--prompts", "builtin:pirate_prompts", "--judge", reward_run)
    assert result.exit_code == 2 and "was trained on a base with another tokenizer than" in result.output
    assert not (in_tmp / "evals" / "arena-answers").exists()


# ---------------------------------------------------------------- end to end on tiny-llama2


def test_arena_ranks_three_models_by_a_judge_and_reuses_cached_answers(tiny_model, sft_run, reward_run, jsonl, in_tmp):
    prompts = jsonl([{"prompt": q} for q in ("What is 2 plus 2?", "Hello!", "Name a sea.", "Why?")], "prompts.jsonl")
    # the alias and its folder are one model under two names: their greedy answers are identical, so they tie
    models = ["tiny-llama2", str(tiny_model.base), str(sft_run)]
    args = [*models, "--prompts", prompts, "--judge", reward_run, "--max-new-tokens", "8", "--bootstrap", "200"]
    first = arena(*args, "--output", "first.json")
    report = report_of(first)
    [board] = report["leaderboards"]
    rows = by_model(board)
    assert board["kind"] == "reward run" and board["judge"] == str(reward_run) and board["battles"] == 4 * 3
    assert set(rows) == set(models) and all(row["battles"] == 8 for row in rows.values())
    assert math.isclose(sum(row["score"] for row in rows.values()) / 3, 1000, abs_tol=1e-6)
    assert all(row["ci95"][0] <= row["score"] <= row["ci95"][1] for row in rows.values())
    order, matrix = board["win_rate"]["models"], board["win_rate"]["matrix"]
    assert matrix[order.index(models[0])][order.index(models[1])] == 0.5
    assert all(matrix[i][j] + matrix[j][i] == 1 for i in range(3) for j in range(3) if i != j)
    assert set(report["scores"][str(reward_run)]) == set(models) and report["prompt_count"] == 4
    assert "#  model" in first.output and "95% CI" in first.output and (in_tmp / "first.png").stat().st_size > 0
    cached = {path: (in_tmp / path).read_bytes() for path in report["answers"].values()}
    assert len(cached) == 3 and all(len(text.splitlines()) == 4 for text in cached.values())

    killed = in_tmp / report["answers"][str(sft_run)]
    killed.write_text("".join(cached[str(killed.relative_to(in_tmp))].decode().splitlines(True)[:3]), encoding="utf-8")
    second = arena(*args, "--output", "second.json")
    assert report_of(second)["leaderboards"] == report["leaderboards"]
    assert second.output.count("all answers cached in") == 2 and f"{sft_run}: 1 of 4 answers generated" in second.output
    assert {path: (in_tmp / path).read_bytes() for path in cached} == cached  # greedy: the same answer again
