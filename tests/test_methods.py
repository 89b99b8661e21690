"""The method table is the one list of training methods: the CLI, the shipped recipes and the benchmarks follow it."""

import inspect

import pytest
import typer

from posttrain.cli import app
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
