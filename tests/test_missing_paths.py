"""A run folder or model path that is not there: the message names the missing path and, where a shipped recipe
writes that folder, the command that makes it; never a hub or network problem."""

import pytest
from typer.testing import CliRunner

from posttrain.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, message):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert message in result.output, result.output
    assert "cannot be reached" not in result.output and "is a model" not in result.output


@pytest.fixture
def clean_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/ here: every earlier stage is missing
    return tmp_path


@pytest.mark.parametrize("method", ["dpo", "kto", "rs", "ppo", "grpo", "gatt", "distill"])
def test_missing_earlier_run_names_the_command_that_makes_it(clean_folder, method):
    result = invoke(method, f"smollm2-135m/{method}", "--dry-run")
    assert_user_error(result, "model.name: model path not found: runs/smollm2-135m-sft")
    assert "`posttrain sft smollm2-135m/sft` writes: run that first" in result.output


def test_missing_run_of_a_users_recipe_names_the_method_it_continues(clean_folder):
    result = invoke("dpo", "smollm2-135m/dpo", "--dry-run", "--set", "model.name=runs/my-sft")
    assert_user_error(result, "model.name: model path not found: runs/my-sft")
    assert "dpo usually continues a `posttrain sft` run" in result.output


@pytest.mark.parametrize("name", ["runs/tiny-sf", "./tiny-sft", "~/no-such-run", "a/b/c", "my run", "model.gguf"])
def test_path_like_name_that_does_not_exist_is_a_missing_path(clean_folder, name):
    result = invoke("generate", name, "--prompts", "p.jsonl", "--output", "o.jsonl")
    assert_user_error(result, f"model path not found: {name}")


def test_hub_id_shape_with_dots_is_not_taken_for_a_path():
    from posttrain.models.loading import looks_like_path

    assert not looks_like_path("Qwen/Qwen2.5-0.5B") and not looks_like_path("meta-llama/Llama-2-7b-hf")
    assert looks_like_path("runs/tiny-sft") and looks_like_path("a/b/c")


def test_merge_of_a_missing_run_folder_is_not_called_a_model(clean_folder):
    result = invoke("merge", "runs/nonexist", "--output", "merged")
    assert_user_error(result, "runs/nonexist: no such run folder")


def test_merge_of_a_missing_shipped_run_names_its_command(clean_folder):
    result = invoke("merge", "runs/smollm2-135m-dpo", "--output", "merged")
    assert_user_error(result, "`posttrain dpo smollm2-135m/dpo` writes it: run that first")
