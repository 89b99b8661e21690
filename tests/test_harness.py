"""`posttrain eval harness`: lm-eval's tasks and metrics on a model loaded as posttrain loads it, offline."""

import json
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from posttrain.cli import app

runner = CliRunner()


def evaluate(*args):
    return runner.invoke(app, ["eval", "harness", *map(str, args)])


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def task_folder(tmp_path):
    """Two local lm-eval tasks whose datasets are JSON files: lm-eval's own truthfulqa_mc2 task read from a local
    TruthfulQA-shaped file, and a generate_until task."""
    import lm_eval

    folder = tmp_path / "tasks"
    folder.mkdir()
    # mc2 scores the probability mass on the true answers: 1 when every answer is true, and one half when a true
    # and a false answer are the same text (same log-likelihood); whatever the model, the mean is 0.75.
    docs = [
        {"question": "Is the sun a star?", "mc2_targets": {"choices": ["Yes.", "It is."], "labels": [1, 1]}},
        {"question": "What colour is the sky?", "mc2_targets": {"choices": ["Blue.", "Blue."], "labels": [1, 0]}},
    ]
    (folder / "mc2.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    truthfulqa_mc2 = Path(lm_eval.__file__).parent / "tasks" / "truthfulqa" / "truthfulqa_mc2.yaml"
    mc2 = {
        "include": str(truthfulqa_mc2),
        "task": "local_truthfulqa_mc2",
        "tag": None,
        "dataset_path": "json",
        "dataset_name": None,
        "dataset_kwargs": {"data_files": str(folder / "mc2.jsonl")},
        "validation_split": "train",
    }
    (folder / "local_truthfulqa_mc2.yaml").write_text(yaml.safe_dump(mc2), encoding="utf-8")
    answers = [
        {"question": "What is two plus two?", "answer": "Four."},
        {"question": "Name a colour.", "answer": "Red."},
    ]
    (folder / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers), encoding="utf-8")
    generate = {
        "task": "local_answers",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": str(folder / "answers.jsonl")},
        "test_split": "train",
        "output_type": "generate_until",
        "doc_to_text": "Question: {{question}}\nAnswer:",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 8, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    (folder / "local_answers.yaml").write_text(yaml.safe_dump(generate), encoding="utf-8")
    group = {"group": "local_group", "task": ["local_truthfulqa_mc2", "local_answers"]}
    (folder / "local_group.yaml").write_text(yaml.safe_dump(group), encoding="utf-8")
    return folder


def test_lm_eval_scores_a_multiple_choice_and_a_generative_task(task_folder, in_tmp):
    tasks = "local_truthfulqa_mc2,local_answers"
    result = evaluate("tiny-llama2", "--tasks", tasks, "--include-path", task_folder, "--output", "report.json")
    assert result.exit_code == 0, result.output
    report = json.loads((in_tmp / "report.json").read_text())
    assert report["mode"] == "harness" and report["lm_eval_version"] == "0.4.13"
    mc2 = report["results"]["local_truthfulqa_mc2"]
    assert mc2["metrics"]["acc"]["value"] == pytest.approx(0.75, abs=1e-6)
    assert mc2["samples"] == 2 and mc2["num_fewshot"] == 0
    answers = report["results"]["local_answers"]["metrics"]["exact_match"]
    assert 0.0 <= answers["value"] <= 1.0 and answers["stderr"] is not None
    assert report["results"]["local_answers"]["samples"] == 2
    assert "local_truthfulqa_mc2 acc" in result.output and "0.7500" in result.output


def test_limit_and_chat_template_reach_lm_eval(task_folder, in_tmp):
    args = ["--include-path", task_folder, "--limit", 1, "--apply-chat-template", "--output", "report.json"]
    result = evaluate("tiny-llama2", "--tasks", "local_truthfulqa_mc2", *args)
    assert result.exit_code == 0, result.output
    report = json.loads((in_tmp / "report.json").read_text())
    record = report["results"]["local_truthfulqa_mc2"]
    assert record["samples"] == 1 and record["samples_in_task"] == 2
    assert record["metrics"]["acc"]["value"] == pytest.approx(1.0, abs=1e-6)  # the first doc: every answer true
    assert report["settings"]["apply_chat_template"] is True and report["settings"]["limit"] == 1


def test_an_unknown_task_lists_close_names(in_tmp):
    result = evaluate("tiny-llama2", "--tasks", "truthfulqa_mc3")
    assert result.exit_code == 2
    assert "no task 'truthfulqa_mc3'" in result.output and "truthfulqa_mc2" in result.output
    assert not (in_tmp / "evals").exists() or not list((in_tmp / "evals").glob("*.json"))


def test_a_task_asked_for_twice_through_its_group_is_refused_before_the_model_loads(task_folder, in_tmp):
    result = evaluate("tiny-llama2", "--tasks", "local_group,local_answers", "--include-path", task_folder)
    assert result.exit_code == 2
    assert "Duplicate task 'local_answers'" in result.output and "Name a group or its tasks" in result.output
    assert "loading tiny-llama2" not in result.output


def test_a_missing_lm_eval_says_how_to_install_it(in_tmp, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    result = evaluate("tiny-llama2", "--tasks", "truthfulqa_mc2")
    assert result.exit_code == 2
    assert "pip install 'posttrain[eval]'" in result.output


def test_a_run_folder_is_evaluated_with_its_adapter(sft_run, task_folder, in_tmp):
    args = ["--tasks", "local_truthfulqa_mc2", "--include-path", task_folder, "--limit", 1, "--output", "report.json"]
    result = evaluate(sft_run, *args)
    assert result.exit_code == 0, result.output
    report = json.loads((in_tmp / "report.json").read_text())
    assert report["model"] == str(sft_run)
    assert report["results"]["local_truthfulqa_mc2"]["metrics"]["acc"]["value"] == pytest.approx(1.0, abs=1e-6)
