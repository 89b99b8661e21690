"""Recipes: shipped ones parse, layering of defaults / YAML / --set, and precise errors."""

import pytest

from posttrain.errors import UserError
from posttrain.recipe import load_recipe, shipped_recipes


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_every_shipped_recipe_parses_and_opens_with_its_command(name):
    path = shipped_recipes()[name]
    first_line = path.read_text().splitlines()[0]
    recipe = load_recipe(name)
    assert first_line.startswith(f"# posttrain {recipe.method} ")
    assert first_line.split()[-1].endswith(f"{name}.yaml")


def test_shipped_recipe_resolves_by_name_and_by_path():
    by_name = load_recipe("smollm2-135m/sft")
    by_path = load_recipe(str(shipped_recipes()["smollm2-135m/sft"]))
    assert by_name.to_dict() == by_path.to_dict()


def test_defaults_then_yaml_then_set(write_recipe):
    path = write_recipe(lora={"r": 8})
    recipe = load_recipe(str(path), ["lora.alpha=64", "train.learning_rate=1e-4"])
    assert recipe.lora.r == 8  # YAML over default
    assert recipe.lora.alpha == 64  # --set over default
    assert recipe.lora.dropout == 0.05  # default
    assert recipe.train["learning_rate"] == 1e-4  # "1e-4" is text in YAML 1.1; read as a number


def test_unknown_section_key_suggests_the_right_one(write_recipe):
    with pytest.raises(UserError, match=r"unknown recipe key lora\.alhpa\. Did you mean lora\.alpha\?"):
        load_recipe(str(write_recipe(lora={"alhpa": 8})))


def test_unknown_key_without_a_close_match_lists_the_known_ones(write_recipe):
    with pytest.raises(UserError, match=r"lora\.rank\. Known: alpha, dropout, r, target_modules"):
        load_recipe(str(write_recipe(lora={"rank": 8})))


def test_unknown_train_key_is_checked_against_trl_config(write_recipe):
    with pytest.raises(UserError, match=r"train\.learning_rte\. Did you mean train\.learning_rate\?"):
        load_recipe(str(write_recipe(train={"learning_rte": 1e-4})))


def test_wrong_type_names_key_and_expectation(write_recipe):
    with pytest.raises(UserError, match=r"train\.learning_rate: expected a number, got 'fast'"):
        load_recipe(str(write_recipe(train={"learning_rate": "fast"})))


def test_eval_fraction_of_zero_says_how_to_hold_nothing_out(write_recipe):
    with pytest.raises(UserError, match=r"eval_fraction must be above 0 and below 1, got 0; null \(the default\)"):
        load_recipe(str(write_recipe(data={"train": "builtin:pirate_sft", "eval_fraction": 0})))


def test_yaml_syntax_error_reports_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("method: sft\nmodel:\n  name: [unclosed\ndata: {}\n")
    with pytest.raises(UserError, match=r"YAML syntax error at line \d"):
        load_recipe(str(path))


def test_missing_recipe_lists_how_to_find_shipped_ones():
    with pytest.raises(UserError, match="recipe not found: nope.yaml"):
        load_recipe("nope.yaml")


def test_keys_posttrain_owns_point_to_their_place(write_recipe):
    with pytest.raises(UserError, match=r"train\.max_length is set by posttrain: set `data\.max_length`"):
        load_recipe(str(write_recipe(train={"max_length": 64})))


def test_recipe_for_another_method_names_its_command(write_recipe):
    path = write_recipe(method="dpo")
    with pytest.raises(UserError, match="run it with `posttrain dpo"):
        load_recipe(str(path), method="sft")


def test_enum_choices_are_listed(write_recipe):
    with pytest.raises(UserError, match="model.quantization: expected one of nf4, fp4, int8, none"):
        load_recipe(str(write_recipe(model={"name": "tiny-llama2", "quantization": "q4"})))
