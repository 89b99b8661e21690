"""Arena votes count once: a round's id on every vote, repeats dropped and reported, appends from several processes
taking turns on one file, the login name on each vote, and one check of a vote shared by the page and `eval arena`."""

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.errors import UserError
from posttrain.evaluation import votes as eval_votes
from posttrain.evaluation.votes import parse_vote, read_votes
from posttrain.inference import arena_votes
from posttrain.inference.arena_votes import VotesFile, vote_row


def a_vote(winner: str = "a", round_id: str | None = None, voter: str | None = None, **changes) -> dict:
    row = vote_row("Why is the sea salty?", "pirate", "base", "Salt, arr.", "Rivers.", winner, round_id, voter)
    return row | {"id": round_id or uuid.uuid4().hex} | changes


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def arena_votes_command(*files):
    """`posttrain eval arena` on votes files alone."""
    options = [option for path in files for option in ("--votes", str(path))]
    return CliRunner().invoke(app, ["eval", "arena", *options, "--bootstrap", "10"])


# ---------------------------------------------------------------- several processes on one votes file

APPEND = """
import sys, time, uuid
from pathlib import Path
from posttrain.inference.arena_votes import VotesFile, vote_row
path, go, count, ids = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
votes = VotesFile(path)
while not go.exists():
    time.sleep(0.005)
for i in range(count):
    round_id = f"round-{i}" if ids == "shared" else uuid.uuid4().hex
    votes.append(vote_row("p" * 3000, "pirate", "base", "x" * 20000, "y" * 20000, "a", round_id, sys.argv[5]))
"""


def append_from_two_processes(path: Path, count: int, ids: str) -> None:
    """Two processes, started together, each appending `count` votes to `path` (ids: each its own, or shared)."""
    go = path.with_suffix(".go")
    workers = [
        subprocess.Popen([sys.executable, "-c", APPEND, str(path), str(go), str(count), ids, voter])
        for voter in ("ana", "bob")
    ]
    go.touch()
    for worker in workers:
        assert worker.wait(timeout=120) == 0


def test_two_processes_appending_to_one_votes_file_keep_every_row_whole(tmp_path):
    path = tmp_path / "votes.jsonl"
    append_from_two_processes(path, 60, "own")
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = [parse_vote(line, f"line {n}") for n, line in enumerate(lines, start=1)]  # every line a whole vote
    assert len(rows) == 120
    assert sorted(row["voter"] for row in rows) == ["ana"] * 60 + ["bob"] * 60
    assert all(row["reply_a"] == "x" * 20000 for row in rows)
    assert VotesFile(path).tally().votes == 120


def test_two_processes_voting_on_the_same_rounds_write_each_rounds_vote_once(tmp_path):
    path = tmp_path / "votes.jsonl"
    append_from_two_processes(path, 60, "shared")  # two servers on one file, both sent the same 60 rounds
    ids = [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert sorted(ids) == sorted(f"round-{i}" for i in range(60))


# ---------------------------------------------------------------- a vote counts once


def test_a_double_submitted_round_is_written_once(tmp_path):
    votes = VotesFile(tmp_path / "votes.jsonl")
    row = a_vote("b", "round-1")
    assert votes.append(row) is True
    assert votes.append(row | {"winner": "a"}) is False  # a second click on the same round
    assert [json.loads(line)["winner"] for line in votes.path.read_text().splitlines()] == ["b"]
    assert votes.tally().votes == 1


def test_a_repeated_vote_is_counted_once_by_the_page_and_by_eval_arena_and_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = a_vote("a", "round-1"), a_vote("b", "round-2")
    path = write_rows(tmp_path / "votes.jsonl", [first, second, first])  # a double submit that got through
    tally = VotesFile(path).tally()
    assert (tally.votes, tally.duplicates) == (2, 1)
    battles, used = read_votes([path, path])  # and the same file given twice
    assert len(battles["human"]) == 2
    assert [(u["rows"], u["duplicates"]) for u in used] == [(2, 1), (0, 3)]
    result = arena_votes_command(path, path)
    assert result.exit_code == 0, result.output
    assert "2 votes used (0 both bad, counted as ties; repeated votes of a round, dropped: 1)" in result.output
    assert "judge human (votes): 2 battles" in result.output


def test_votes_from_before_ids_are_all_kept_and_counted_as_such(tmp_path):
    old = {k: v for k, v in a_vote().items() if k not in ("id", "voter")}
    path = write_rows(tmp_path / "votes.jsonl", [old, old | {"winner": "b"}])
    battles, [used] = read_votes([path])
    assert len(battles["human"]) == 2 and (used["without_id"], used["duplicates"]) == (2, 0)
    assert VotesFile(path).tally().votes == 2


# ---------------------------------------------------------------- who voted


def test_eval_arena_counts_the_votes_of_each_voter(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [a_vote(voter="ana"), a_vote("b", voter="ana"), a_vote("tie", voter="bob"), a_vote()]
    path = write_rows(tmp_path / "votes.jsonl", rows)
    _, [used] = read_votes([path])
    assert used["voters"] == {"ana": 2, "bob": 1, "(no login)": 1}
    result = arena_votes_command(path)
    assert "by voter: (no login) 1, ana 2, bob 1" in result.output


@pytest.fixture
def page(tmp_path):
    """The arena page's handlers on a votes file, without models or a server."""
    from posttrain.inference.arena_page import ArenaPage
    from posttrain.inference.generation import GenerationSettings

    votes = VotesFile(tmp_path / "votes.jsonl")
    votes.prepare()
    arena = ArenaPage([], None, GenerationSettings(), votes)
    arena.build()
    return arena


def a_round(**changes):
    from posttrain.inference.arena_page import Round

    fields = {"id": uuid.uuid4().hex, "prompt": "Hi?", "model_a": "pirate", "model_b": "base"}
    return Round(**(fields | {"reply_a": "Arr.", "reply_b": "Hello."} | changes))


def test_the_login_name_of_the_request_is_on_the_vote(page):
    from gradio import Request
    from gradio.helpers import special_args

    handler = page.vote_button("a")
    done = a_round()
    inputs, *_ = special_args(handler, [done], request=Request(username="ana"))  # as gradio calls it
    handler(*inputs)
    [row] = [json.loads(line) for line in page.votes.path.read_text().splitlines()]
    assert (row["id"], row["voter"], row["winner"]) == (done.id, "ana", "a")


# ---------------------------------------------------------------- one check of a vote


def test_the_page_and_eval_arena_check_a_vote_with_the_same_function():
    assert arena_votes.check_vote is eval_votes.check_vote


@pytest.mark.parametrize(
    ("changes", "says"),
    [
        ({"model_b": "pirate"}, "model_a and model_b are both 'pirate'"),
        ({"model_a": " "}, "model_a is empty"),
        ({"prompt": None}, "prompt must be a string"),
        ({"voter": 7}, "voter must be a non-empty string"),
    ],
)
def test_a_vote_eval_arena_refuses_is_not_counted_by_the_page(page, tmp_path, changes, says):
    from gradio import Error

    row = a_vote(**changes)
    with pytest.raises(UserError, match=says):
        parse_vote(json.dumps(row), "votes.jsonl:1")  # what eval arena says of it
    with pytest.raises(UserError, match=says):
        page.votes.append(row)
    if "voter" not in changes:  # the page's own rounds carry these texts
        with pytest.raises(Error, match=says):
            page.vote("a", a_round(**changes))
    assert page.votes.path.read_text() == "" and page.votes.tally().votes == 0


def test_a_vote_the_page_counts_is_one_eval_arena_counts(page):
    done = a_round()
    page.vote("both_bad", done, "ana")
    assert page.votes.tally().votes == 1
    battles, [used] = read_votes([page.votes.path])
    assert battles == {"human": [("pirate", "base", "tie")]} and used["voters"] == {"ana": 1}
