"""posttrain rs on tiny-llama2: the best candidate is kept, every round fine-tunes the policy, --resume redoes only
what an interruption lost, and bad settings are refused."""

import json
import shutil

import pytest
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.methods.rs import select_best


def candidate(response: str, score: float, finished: bool = True) -> dict:
    return {"response": response, "score": score, "finished": finished}


def test_the_highest_scored_candidate_is_kept_per_prompt():
    prompts = [{"prompt": [{"role": "user", "content": q}]} for q in ("a?", "b?")]
    groups = [
        [candidate("x", 0.1), candidate("y", 2.0), candidate("z", -1.0)],
        [candidate("u", -3.0), candidate("v", -0.5)],
    ]
    selected = select_best(prompts, groups, missing_eos_penalty=0.0)
    assert [row["response"] for row in selected] == ["y", "v"]
    assert [row["score"] for row in selected] == [2.0, -0.5]
    assert selected[0]["candidates"] == groups[0]  # every candidate is written with its score


def test_an_unfinished_answer_loses_by_the_missing_eos_penalty():
    prompts = [{"prompt": [{"role": "user", "content": "a?"}]}]
    groups = [[candidate("cut off", 1.0, finished=False), candidate("done", 0.5)]]
    assert select_best(prompts, groups, missing_eos_penalty=1.0)[0]["response"] == "done"
    assert select_best(prompts, groups, missing_eos_penalty=0.0)[0]["response"] == "cut off"


def rs_recipe(tmp_path, sft_run, reward_run, **settings):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about ship number {i}."}) + "\n" for i in range(4)))
    recipe = {
        "method": "rs",
        "model": {"name": str(sft_run), "quantization": "none"},
        "data": {"train": str(prompts), "max_length": 64},
        "rs": {"reward": str(reward_run), "iterations": 2, "samples_per_prompt": 3, "max_new_tokens": 8} | settings,
        "train": {"max_steps": 2, "learning_rate": 1e-2, "activation_checkpointing": False, "report_to": "none"},
        "output_dir": str(tmp_path / "rs"),
    }
    path = tmp_path / "rs.yaml"
    path.write_text("# posttrain rs rs.yaml\n" + yaml.safe_dump(recipe))
    return path


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_each_round_keeps_the_best_of_k_and_fine_tunes_on_it(tmp_path, sft_run, reward_run):
    result = CliRunner().invoke(app, ["rs", str(rs_recipe(tmp_path, sft_run, reward_run))])
    assert result.exit_code == 0, result.output
    run = tmp_path / "rs"
    for number in (1, 2):
        selected = read_jsonl(run / "selected" / f"round-{number}.jsonl")
        assert len(selected) == 4 and all(len(row["candidates"]) == 3 for row in selected)
        for row in selected:
            if not any(c["finished"] for c in row["candidates"]):
                assert row["response"] is None  # every answer cut off: nothing kept
                continue
            ranked = [c["score"] - (not c["finished"]) for c in row["candidates"]]  # missing_eos_penalty 1.0
            assert row["response"] == row["candidates"][ranked.index(max(ranked))]["response"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2]
    rounds = [json.loads((run / "checkpoints" / f"round-{n}" / "metrics.json").read_text()) for n in (1, 2)]
    assert metrics["final_step"] == sum(r["final_step"] for r in rounds) > 0  # the GPU check's fp16-skip share
    assert metrics["fp16_skipped_steps"] == sum(r["fp16_skipped_steps"] for r in rounds)
    before = load_file(str(sft_run / "adapter" / "adapter_model.safetensors"))
    after = load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert before.keys() == after.keys()
    assert all(not before[k].equal(after[k]) for k in before if "lora_B" in k)
    assert "round 2/2" in result.output and "done: run folder" in result.output


def test_resume_redoes_only_the_lost_round(tmp_path, sft_run, reward_run):
    path = rs_recipe(tmp_path, sft_run, reward_run)
    assert CliRunner().invoke(app, ["rs", str(path)]).exit_code == 0
    run = tmp_path / "rs"
    whole = json.loads((run / "metrics.json").read_text())
    round_one = (run / "selected" / "round-1.jsonl").read_text()
    # as if killed while fine-tuning round 2
    for lost in (run / "checkpoints" / "round-2" / "adapter", run / "adapter"):
        shutil.rmtree(lost)
    (run / "checkpoints" / "round-2" / "metrics.json").unlink()
    (run / "metrics.json").unlink()
    result = CliRunner().invoke(app, ["rs", str(path), "--resume"])
    assert result.exit_code == 0, result.output
    assert "round 1/2" not in result.output and "round 2/2" in result.output
    assert (run / "selected" / "round-1.jsonl").read_text() == round_one
    resumed = json.loads((run / "metrics.json").read_text())
    for a, b in zip(whole["rounds"], resumed["rounds"], strict=True):
        for key in ("round", "mean_score", "best_score", "train_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), key


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"samples_per_prompt": 1}, "rs.samples_per_prompt must be at least 2"),
        ({"reward": ""}, "rs.reward is required"),
        ({"max_new_tokens": 60}, "longer than data.max_length - rs.max_new_tokens = 4"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_written(tmp_path, sft_run, reward_run, settings, message):
    result = CliRunner().invoke(app, ["rs", str(rs_recipe(tmp_path, sft_run, reward_run, **settings))])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in result.output
    assert not (tmp_path / "rs").exists()
