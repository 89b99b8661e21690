"""The held-out check at the end of ppo and rs (issues #19, #29): the trained model against the one it started from,
on prompts the run did not train on, with the bars it meets or misses, in metrics.json and heldout.jsonl."""

import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.evaluation.heldout_bars import heldout_bars, kl_bar
from posttrain.methods import ppo, rs
from posttrain.recipe import load_recipe

PER_MODEL = {"mean_score", "perplexity", "mean_tokens", "cut_off", "loops"}
BARS = {"fluency", "loops", "cut_off", "reward_interval", "second_judge"}


@pytest.fixture(scope="session")
def opposite_judge(tmp_path_factory, reward_run):
    """The session's reward run with its score head negated: it scores every answer the opposite way."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("runs") / "opposite-judge"
    shutil.copytree(reward_run, folder)
    weights = folder / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    heads = [name for name in tensors if ".score." in name]
    assert heads, sorted(tensors)
    save_file({name: -tensor if name in heads else tensor for name, tensor in tensors.items()}, weights)
    return folder


@pytest.fixture(scope="module", params=["ppo", "rs"])
def finished(request, tmp_path_factory, sft_run, reward_run, opposite_judge):
    """(method, run folder, printed output) of a ppo or rs run judged also by `opposite_judge`. Cut-off answers are
    scored by the judges (truncated: append_eos), so that the two judges disagree on every pair."""
    method, folder = request.param, tmp_path_factory.mktemp(request.param)
    section = {"reward": str(reward_run), "judge": str(opposite_judge), "max_new_tokens": 8}
    section |= {"truncated": "append_eos", "eval_prompts": "builtin:pirate_heldout"}
    section |= {"steps": 2, "batch_size": 2, "mini_batch_size": 2, "kl_budget": 1000.0} if method == "ppo" else {}
    section |= {"iterations": 1, "samples_per_prompt": 2, "batch_size": 2} if method == "rs" else {}
    recipe = {
        "method": method,
        "model": {"name": str(sft_run), "quantization": "none"},
        "data": {"train": "builtin:pirate_sft", "max_length": 192},
        method: section,
        "output_dir": str(folder / "run"),
    }
    if method == "rs":
        # a high learning rate, so that the trained model answers otherwise than the start
        recipe["train"] = {
            "max_steps": 2,
            "learning_rate": 1e-2,
            "activation_checkpointing": False,
            "report_to": "none",
        }
    path = folder / f"{method}.yaml"
    path.write_text(f"# posttrain {method} {path.name}\n" + yaml.safe_dump(recipe), encoding="utf-8")
    result = CliRunner().invoke(app, [method, str(path)])
    assert result.exit_code == 0, result.output
    return method, folder / "run", result.output


def heldout_of(run) -> dict:
    return json.loads((run / "metrics.json").read_text())["heldout"]


def rows_of(run) -> list[dict]:
    return [json.loads(line) for line in (run / "heldout.jsonl").read_text().splitlines()]


def test_the_run_reports_the_heldout_check_in_metrics(finished):
    method, run, output = finished
    heldout = heldout_of(run)
    assert heldout["prompts"] == 120 and heldout["max_new_tokens"] == 8
    wins, losses, ties = heldout["wins_losses_ties"]
    assert wins + losses + ties == 120 and wins != losses  # a tie in the counts would hide a swapped side
    assert heldout["win_rate"] == pytest.approx((wins + ties / 2) / 120)  # ties count half
    low, high = heldout["win_rate_ci95"]
    assert low < heldout["win_rate"] < high
    for model in ("start", "trained"):
        assert set(heldout[model]) == PER_MODEL
        assert 0 <= heldout[model]["cut_off"] <= 1 and 0 < heldout[model]["mean_tokens"] <= 8
        assert heldout[model]["perplexity"] > 1
    assert (heldout["final_kl"] is None) == (method == "rs")  # rs measures no KL while training
    assert len(heldout["examples"]) == 3 and "answers" not in heldout
    assert "held-out    120 prompts, greedy: win rate" in output

    # every prompt's pair, in heldout.jsonl: the summary is made of these rows
    rows = rows_of(run)
    assert [row["prompt"] for row in rows[:3]] == [example["prompt"] for example in heldout["examples"]]
    outcomes = [[row["winner"] for row in rows].count(who) for who in ("trained", "start", "tie")]
    assert outcomes == heldout["wins_losses_ties"]
    for model in ("start", "trained"):
        scores = [row[f"{model}_score"] for row in rows]
        assert sum(scores) / 120 == pytest.approx(heldout[model]["mean_score"])
        assert all(row[f"{model}_perplexity"] is None or row[f"{model}_perplexity"] > 1 for row in rows)


def test_each_answer_row_flags_loops_and_cut_offs_and_the_summary_counts_them(finished):
    from posttrain.evaluation.loops import has_loop

    _, run, _ = finished
    heldout, rows = heldout_of(run), rows_of(run)
    for model in ("start", "trained"):
        assert [row[f"{model}_loop"] for row in rows] == [has_loop(row[model]) for row in rows]
        assert sum(row[f"{model}_loop"] for row in rows) / 120 == heldout[model]["loops"]
        assert sum(row[f"{model}_cut_off"] for row in rows) / 120 == heldout[model]["cut_off"]


def test_the_second_judge_is_asked_and_not_the_optimised_reward_run(finished, opposite_judge):
    # opposite_judge scores every answer as the reward run does, negated: each win becomes a loss
    _, run, output = finished
    heldout, rows = heldout_of(run), rows_of(run)
    judge = heldout["judge"]
    assert judge["run"] == str(opposite_judge)
    wins, losses, ties = heldout["wins_losses_ties"]
    assert judge["wins_losses_ties"] == [losses, wins, ties] and losses != wins
    assert judge["win_rate"] == pytest.approx(1 - heldout["win_rate"])
    flipped = {"trained": "start", "start": "trained", "tie": "tie"}
    assert [row["judge_winner"] for row in rows] == [flipped[row["winner"]] for row in rows]
    assert [row["trained_judge_score"] for row in rows] == pytest.approx([-row["trained_score"] for row in rows])
    second = heldout["bars"]["second_judge"]
    assert second == {"run": str(opposite_judge), "win_rate": judge["win_rate"], "pass": judge["win_rate"] > 0.5}
    assert f"  judge     {opposite_judge}: win rate {judge['win_rate']:.3f}" in output


def test_the_fluency_bar_scores_the_sft_data_answers_as_eval_perplexity_does(finished, tmp_path):
    # the start is the session's SFT run, trained on builtin:pirate_sft: its assistant turns, each a text of its own
    from pathlib import Path

    import posttrain
    from posttrain.evaluation.perplexity import perplexity

    _, run, output = finished
    heldout = heldout_of(run)
    data = Path(posttrain.__file__).parent / "data" / "builtin" / "pirate_sft.jsonl"
    chats = [json.loads(line)["messages"] for line in data.read_text(encoding="utf-8").splitlines()]
    answers = [turn["content"] for chat in chats for turn in chat if turn["role"] == "assistant"]
    assert len(chats) == 120 and len(answers) == 130  # some conversations have two answers
    texts = tmp_path / "answers.jsonl"
    texts.write_text("".join(json.dumps({"text": answer}) + "\n" for answer in answers), encoding="utf-8")
    expected = perplexity("tiny-llama2", str(texts))["perplexity"]  # `posttrain eval perplexity`, same base model
    assert heldout["taught"] == {
        "source": "builtin:pirate_sft",
        "answers": 130,
        "total": 130,
        "perplexity": pytest.approx(expected, rel=1e-5),
    }
    fluency = heldout["bars"]["fluency"]
    assert fluency["taught_perplexity"] == heldout["taught"]["perplexity"]
    assert fluency["pass"] == (heldout["trained"]["perplexity"] <= heldout["taught"]["perplexity"])
    assert "  taught    base-model perplexity" in output


def test_every_bar_is_in_metrics_and_printed_with_its_verdict(finished):
    method, run, output = finished
    bars = heldout_of(run)["bars"]
    assert set(bars) == BARS | ({"kl"} if method == "ppo" else set())
    verdicts = {"pass": True, "FAIL": False, "n/a": None}
    printed = [line.split()[0] for line in output.splitlines() if line.split() and line.split()[0] in verdicts]
    assert [verdicts[word] for word in printed] == [bar["pass"] for bar in bars.values()]


def test_ppo_reports_its_highest_kl_against_the_budget(finished):
    method, run, _ = finished
    if method != "ppo":
        pytest.skip("rs measures no KL")
    steps = json.loads((run / "metrics.json").read_text())["steps"]
    highest = max(steps, key=lambda step: step["kl"])
    assert heldout_of(run)["bars"]["kl"] == {
        "highest": highest["kl"],
        "step": highest["step"],
        "budget": 1000.0,
        "pass": True,
    }


def report(**parts) -> dict:
    """A held-out report's measures, as heldout_report gives them to heldout_bars (120 prompts)."""
    model = {"perplexity": 20.0, "cut_off": 0.0, "loops": 0.0}
    return {
        "prompts": 120,
        "win_rate_ci95": [0.55, 0.7],
        "trained": model | parts.pop("trained", {}),
        "start": model | parts.pop("start", {}),
        "taught": {"perplexity": 60.0},
        "judge": {"run": "judge", "win_rate": 0.6},
    } | parts


def test_each_bar_passes_at_its_limit_and_fails_beyond_it():
    assert all(bar["pass"] for bar in heldout_bars(report(trained={"perplexity": 60.0, "cut_off": 6 / 120})).values())
    assert not heldout_bars(report(trained={"perplexity": 60.01}))["fluency"]["pass"]
    assert not heldout_bars(report(trained={"loops": 2 / 120}, start={"loops": 1 / 120}))["loops"]["pass"]
    assert not heldout_bars(report(trained={"cut_off": 7 / 120}))["cut_off"]["pass"]
    assert not heldout_bars(report(win_rate_ci95=[0.5, 0.7]))["reward_interval"]["pass"]
    assert not heldout_bars(report(judge={"run": "judge", "win_rate": 0.5}))["second_judge"]["pass"]
    assert kl_bar({1: 0.5, 2: 3.0, 3: 2.0}, 3.0) == {"highest": 3.0, "step": 2, "budget": 3.0, "pass": True}
    assert not kl_bar({1: 3.01}, 3.0)["pass"]


def test_a_bar_without_what_it_needs_is_not_measured():
    bars = heldout_bars(report(taught=None, judge=None))
    assert bars["fluency"]["pass"] is None and bars["second_judge"]["pass"] is None
    assert kl_bar({1: 9.0}, None)["pass"] is None


def test_the_sft_data_is_found_through_the_runs_the_start_continued_from(sft_run, tmp_path):
    from posttrain.evaluation.taught_text import taught_text

    later = tmp_path / "dpo"  # a run continued from the SFT run, as `model.name: SFT_RUN` records it
    later.mkdir()
    (later / "recipe.yaml").write_text(yaml.safe_dump({"method": "dpo", "model": {"name": str(sft_run)}}))
    taught, line = taught_text(later, None, seed=42)
    assert taught.source == "builtin:pirate_sft" and len(taught.answers) == taught.total == 130
    assert line == "taught      130 answers of builtin:pirate_sft, scored beside the held-out ones"
    taught, line = taught_text(None, None, seed=42)  # a policy started from a base model, no ptx data
    assert taught is None and "fluency bar not measured" in line


def test_a_judge_that_is_no_second_reward_run_is_refused(rl_recipe, sft_run, reward_run):
    for judge, says in ((sft_run, "is not a reward run"), (reward_run, "is the reward run the policy optimises")):
        result = CliRunner().invoke(app, ["ppo", str(rl_recipe("ppo", judge=str(judge))), "--dry-run"])
        assert result.exit_code == 2 and "ppo.judge" in result.output and says in result.output, result.output


def test_rs_seed_seeds_its_fine_tuning_unless_train_seed_is_given(rl_recipe):
    assert rs.prepare(load_recipe(str(rl_recipe("rs", seed=7)))).recipe.train["seed"] == 7
    given = load_recipe(str(rl_recipe("rs", seed=7)), ["train.seed=3"])
    assert rs.prepare(given).recipe.train["seed"] == 3


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


# ---------------------------------------------------------------- shared among processes (issue #28)


def as_processes(count: int, run, monkeypatch) -> list:
    """run(state) in `count` threads that stand in for the processes of a launch (accelerate's state: this one's
    index, how many), with accelerate's gather_object gathering across them; each one's result. One thread computes
    at a time (it hands the turn on only while it waits in a gather): loading models in two threads at once leaves
    transformers' meta-device loading switched on for every later model of this process."""
    import threading
    from types import SimpleNamespace

    import accelerate.utils

    barrier, slots, results, errors = threading.Barrier(count, timeout=300), [None] * count, [None] * count, []
    rank, turn = threading.local(), threading.Lock()

    def gather_object(objects: list) -> list:
        slots[rank.index] = objects
        turn.release()
        try:
            barrier.wait()
            gathered = [item for slot in slots for item in slot]
            barrier.wait()  # every one has read the slots before any writes the next gather's
        finally:
            turn.acquire()
        return gathered

    def process(index: int) -> None:
        rank.index = index
        with turn:
            try:
                state = SimpleNamespace(process_index=index, num_processes=count, is_main_process=not index)
                results[index] = run(state)
            except BaseException as err:  # raised below, in the test's own thread
                errors.append(err)
                barrier.abort()

    monkeypatch.setattr(accelerate.utils, "gather_object", gather_object)
    threads = [threading.Thread(target=process, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def test_each_process_works_on_whole_batches_and_every_process_gets_every_result(monkeypatch):
    from posttrain.launch import share_items

    given = {}

    def share_of(items: list):
        def share(state) -> list:
            def work(mine: list) -> list:
                given[state.process_index] = mine
                return [f"{item} done" for item in mine]

            return share_items(state, items, 3, work)

        return share

    assert as_processes(4, share_of(list(range(10))), monkeypatch) == [[f"{i} done" for i in range(10)]] * 4
    assert given == {0: [0, 1, 2], 1: [3, 4, 5], 2: [6, 7, 8], 3: [9]}  # every 4th batch of 3, the last one short
    given.clear()
    assert as_processes(3, share_of(list(range(4))), monkeypatch) == [[f"{i} done" for i in range(4)]] * 3
    assert given == {0: [0, 1, 2], 1: [3]}  # a process with no batch does no work (loads no model)


def test_the_check_shared_by_two_processes_reports_what_one_process_does(
    monkeypatch, sft_run, reward_run, opposite_judge
):
    from functools import partial

    from posttrain.evaluation.heldout import heldout_report, in_this_process
    from posttrain.evaluation.taught_text import TaughtText
    from posttrain.launch import share_items

    # 17 prompts: batches of 8, 8 and 1, two to the first process; prompts of unlike lengths, so batches pad
    prompts = [[{"role": "user", "content": "Ahoy! " * (i % 5) + f"What be treasure number {i}?"}] for i in range(17)]
    taught = TaughtText("builtin:pirate_sft", [f"Arr, {i} doubloons!" * (1 + i % 3) for i in range(5)], 5)

    def check(share) -> dict:
        return heldout_report(
            "tiny-llama2",  # the start: the base model, with the recipe's chat template
            str(sft_run),  # the trained model: an SFT run on it
            str(reward_run),
            "tiny-llama2",
            prompts,
            max_new_tokens=8,
            start_chat_template="llama2",
            quantization="none",
            truncated_score=None,
            seed=42,
            second_judge=str(opposite_judge),
            taught=taught,
            echo=lambda _: None,
            share=share,
        )

    alone = check(in_this_process)
    assert any(row["start"] != row["trained"] for row in alone["answers"])  # two models that answer differently
    shared = as_processes(2, lambda state: check(partial(share_items, state)), monkeypatch)
    assert shared == [alone, alone]  # answers, scores and perplexities bit for bit, in order, in both processes
