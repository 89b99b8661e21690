"""The method table is the one list of training methods: the CLI, the shipped recipes and the benchmarks follow it."""

import inspect
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.cli.train import training_args
from posttrain.methods import METHODS
from posttrain.recipe import read_yaml, shipped_recipes


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_module_has_the_one_entry_point(name):
    module = METHODS[name].module
    assert list(inspect.signature(module.prepare).parameters) == ["recipe", "echo"]
    assert list(inspect.signature(module.train).parameters) == ["stage", "resume", "echo"]


def test_the_cli_has_one_training_command_per_method_with_its_help():
    commands = typer.main.get_command(app).commands
    for method in METHODS.values():
        assert commands[method.name].help == method.help


def test_every_shipped_recipe_names_a_method_and_every_method_has_a_smollm2_recipe():
    methods = {name: read_yaml(path)["method"] for name, path in shipped_recipes().items()}
    assert set(methods.values()) <= set(METHODS)
    assert {f"smollm2-135m/{name}" for name in METHODS} <= set(methods)


def test_a_method_comes_after_the_runs_it_starts_from():
    """The benchmarks train methods in table order, so the runs a method starts from must exist by then."""
    order = list(METHODS)
    for method in METHODS.values():
        assert all(order.index(earlier) < order.index(method.name) for earlier in method.starts_from)
        assert set(method.starts_from) <= set(METHODS)
        assert method.continues_from <= set(METHODS)


@pytest.mark.parametrize("name", list(METHODS))
def test_each_training_command_runs_its_own_method(name, monkeypatch, tmp_path):
    from posttrain.methods import common

    ran = []
    monkeypatch.setattr(common, "run_method", lambda recipe, **options: ran.append((recipe.method, options["dry_run"])))
    recipe = shipped_recipes()[f"smollm2-135m/{name}"]
    result = CliRunner().invoke(app, [name, str(recipe), "--dry-run", "--output-dir", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert ran == [(name, True)]


def test_a_launched_process_gets_the_whole_training_command():
    args = training_args("dpo", "dpo.yaml", ["train.max_steps=3", "lora.r=8"], Path("out"), True, True)
    assert args == [
        *("dpo", "dpo.yaml", "--set", "train.max_steps=3", "--set", "lora.r=8"),
        *("--output-dir", "out", "--resume", "--overwrite"),
    ]
    assert training_args("sft", "sft.yaml", None, None, False, False) == ["sft", "sft.yaml"]
