"""The CLI as a user meets it: help, env, recipes, data inspect, and every bad input -> exit 2, no traceback,
nothing written."""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from posttrain.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, message):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert message in result.output


def test_help_is_instant_because_heavy_libraries_load_lazily():
    code = "import sys, posttrain.cli; print(sorted({'torch', 'transformers', 'trl'} & set(sys.modules)))"
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert imported.strip() == "[]"
    assert "sft" in invoke("--help").output


def test_env_reports_versions_hardware_and_precision():
    result = invoke("env")
    assert result.exit_code == 0
    for word in ("transformers", "trl", "peft", "bitsandbytes", "hardware", "precision"):
        assert word in result.output


def test_recipes_lists_shipped_recipes_with_their_command():
    result = invoke("recipes", "--keys")
    assert result.exit_code == 0
    assert "smollm2-135m/sft" in result.output and "posttrain sft recipes/smollm2-135m/sft.yaml" in result.output
    assert "quantization" in result.output


def test_data_inspect_reports_format_rows_and_lengths():
    result = invoke("data", "inspect", "builtin:pirate_sft", "--model", "tiny-llama2", "--chat-template", "llama2")
    assert result.exit_code == 0, result.output
    assert "format messages, 120 rows" in result.output and "tokens per row" in result.output


def test_data_inspect_counts_with_the_template_a_recipe_for_the_model_picks():
    tiny = invoke("data", "inspect", "builtin:pirate_prefs", "--model", "tiny-llama2")
    assert tiny.exit_code == 0, tiny.output  # tiny-llama2 has no ChatML tokens: a recipe for it uses llama2
    assert "(tokens counted with tiny-llama2, llama2 template)" in tiny.output
    from posttrain.recipe import default_chat_template

    assert default_chat_template("smollm2-135m") == "chatml"  # as its shipped recipes say


def test_data_inspect_of_text_files_reports_the_blocks_they_make(tmp_path):
    for i in (1, 2, 3):
        (tmp_path / f"notes{i}.md").write_text(f"Notes on ship {i}. " * 40 * i)
    result = invoke("data", "inspect", str(tmp_path), "--model", "tiny-llama2", "--max-length", "256")
    assert result.exit_code == 0, result.output
    assert "format text, 3 rows" in result.output and "tokens per document" in result.output
    assert "3 documents" in result.output and "no token dropped" in result.output


def test_dry_run_prints_the_plan_and_writes_nothing(write_recipe, tmp_path):
    result = invoke("sft", write_recipe(), "--dry-run")
    assert result.exit_code == 0, result.output
    assert "precision fp32" in result.output and "train rows" in result.output and "dry run" in result.output
    assert not (tmp_path / "run").exists()


def test_sft_through_the_cli_writes_a_finished_run(write_recipe, tmp_path):
    result = invoke("sft", write_recipe(), "--set", "train.max_steps=1")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "metrics.json").is_file()


# ---------------------------------------------------------------- bad input: exit 2, clear words, nothing written


def test_missing_recipe(tmp_path):
    assert_user_error(invoke("sft", tmp_path / "nope.yaml"), "recipe not found")


def test_yaml_syntax_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("method: sft\nmodel: {name: tiny-llama2\n")
    assert_user_error(invoke("sft", path), "YAML syntax error at line")


def test_unknown_key(write_recipe, tmp_path):
    assert_user_error(invoke("sft", write_recipe(), "--set", "lora.alhpa=8"), "Did you mean lora.alpha?")
    assert not (tmp_path / "run").exists()


def test_wrong_type(write_recipe, tmp_path):
    result = invoke("sft", write_recipe(train={"learning_rate": "fast"}))
    assert_user_error(result, "train.learning_rate: expected a number, got 'fast'")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (None, "data file not found"),
        ([], "holds no rows"),
        ([{"question": "Hi", "answer": "Arr!"}], "line 1 fits no known format"),
    ],
)
def test_bad_data(write_recipe, jsonl, tmp_path, rows, message):
    data = tmp_path / "missing.jsonl" if rows is None else jsonl(rows)
    assert_user_error(invoke("sft", write_recipe(data={"train": str(data)})), message)
    assert not (tmp_path / "run").exists()


def test_output_dir_holding_a_finished_run_is_refused_and_kept(write_recipe, tmp_path):
    assert invoke("sft", write_recipe(), "--set", "train.max_steps=1").exit_code == 0
    before = (tmp_path / "run" / "metrics.json").read_bytes()
    assert_user_error(invoke("sft", write_recipe()), "already holds a finished run")
    assert (tmp_path / "run" / "metrics.json").read_bytes() == before
    assert invoke("sft", write_recipe(), "--set", "train.max_steps=1", "--overwrite").exit_code == 0


def test_output_dir_that_is_not_a_run_is_never_touched(write_recipe, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    assert_user_error(invoke("sft", write_recipe(), "--overwrite"), "is not a posttrain run")
    assert (tmp_path / "run" / "notes.txt").read_text() == "mine"


def test_unfinished_run_is_kept_and_the_message_fits_what_is_there(write_recipe, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text("method: sft\n")  # a run that died before its first checkpoint
    assert_user_error(invoke("sft", write_recipe()), "unfinished run with no complete checkpoint yet. Pass --overwrite")
    (tmp_path / "run" / "checkpoints" / "checkpoint-2").mkdir(parents=True)  # a save that never finished
    assert_user_error(invoke("sft", write_recipe()), "unfinished run with no complete checkpoint yet. Pass --overwrite")
    (tmp_path / "run" / "checkpoints" / "checkpoint-2" / "trainer_state.json").write_text("{}")  # written last
    assert_user_error(invoke("sft", write_recipe()), "holds an unfinished run. Continue it with --resume")


def test_resume_without_a_checkpoint(write_recipe):
    assert_user_error(invoke("sft", write_recipe(), "--resume"), "holds no checkpoint to resume from")


def test_model_path_missing(write_recipe, tmp_path):
    result = invoke("sft", write_recipe(model={"name": str(tmp_path / "no-such-model")}))
    assert_user_error(result, "model path not found")


def test_hub_model_unreachable_says_what_to_do(write_recipe, tmp_path):
    result = invoke("sft", write_recipe(model={"name": "meta-llama/Llama-2-7b-hf"}))
    assert_user_error(result, "meta-llama/Llama-2-7b-hf")
    assert "alias" in result.output or "huggingface-cli login" in result.output
    assert not (tmp_path / "run").exists()


def test_bf16_on_a_cpu_without_it(write_recipe, monkeypatch):
    from posttrain.methods import common
    from posttrain.precision import Hardware

    monkeypatch.setattr(common, "detect_hardware", lambda: Hardware("cpu", "CPU"))
    assert_user_error(invoke("sft", write_recipe(model={"precision": "bf16"})), "has no native bf16")


@pytest.mark.parametrize(
    ("method", "key", "used_by"),
    [
        ("gatt", "eval_prompts=builtin:pirate_heldout", "ppo and rs"),
        ("gatt", "safety_threshold=0.2", "ppo and rs"),
        ("distill", "eval_prompts=builtin:pirate_heldout", "ppo and rs"),
        ("distill", "missing_eos_penalty=2", "ppo, rs and gatt"),
    ],
)
def test_a_key_the_method_does_not_use_is_refused_naming_its_method(method, key, used_by):
    result = invoke(method, f"smollm2-135m/{method}", "--dry-run", "--set", f"{method}.{key}")
    name = key.partition("=")[0]
    assert_user_error(result, f"{method}.{name} does nothing in a {method} run: it is a key of {used_by}")


def test_recipes_keys_shows_posttrains_own_train_defaults():
    result = invoke("recipes", "--keys")
    assert result.exit_code == 0, result.output
    assert "lr_scheduler_type cosine" in result.output and "save_steps 50, save_total_limit 2" in result.output
    assert (
        "  sft      learning_rate 2e-4" in result.output
        and "  rs       learning_rate 2e-4, assistant_only_loss True" in result.output
    )
    gatt_keys = result.output.split("\ngatt:")[1].split("\n\n")[0]
    assert "top_p" in gatt_keys and "eval_prompts" not in gatt_keys and "safety_threshold" not in gatt_keys


def test_plan_exits_1_when_the_run_does_not_fit_and_0_when_it_does():
    assert invoke("plan", "llama2-7b/sft-qlora-t4", "--gpu", "t4").exit_code == 0
    assert invoke("plan", "llama2-7b/sft-qlora-t4", "--memory-gb", "6").exit_code == 1


def test_plan_advises_changes_that_fit_together_before_cutting_max_length():
    too_big = ["--set", "train.per_device_train_batch_size=8", "--set", "train.activation_checkpointing=false"]
    result = invoke("plan", "llama2-7b/sft-qlora-t4", *too_big, "--set", "data.max_length=4096")
    assert result.exit_code == 1, result.output
    assert (
        "train.per_device_train_batch_size=1 --set train.gradient_accumulation_steps=" in result.output
    )  # micro-batch 1
    together = result.output.split("to fit, together: ")[1].split("   ->")[0].split()
    # micro-batch 1 and checkpointing: neither is enough alone, both together fit without cutting data.max_length
    assert "train.per_device_train_batch_size=1" in together and "train.activation_checkpointing=true" in together
    assert "--set train.activation_checkpointing=true   saves" in result.output
    assert (
        result.output.split("--set train.activation_checkpointing=true   saves")[1]
        .splitlines()[0]
        .endswith("(not enough alone)")
    )
    assert not any(setting.startswith("data.max_length") for setting in together)
    assert invoke("plan", "llama2-7b/sft-qlora-t4", *too_big, "--set", "data.max_length=4096", *together).exit_code == 0


def test_plan_knows_the_v100():
    result = invoke("plan", "llama2-7b/sft-qlora-t4", "--gpu", "v100")
    assert result.exit_code == 0, result.output
    assert "fits on NVIDIA V100 16GB" in result.output


def test_version_prints_posttrains_version():
    from importlib.metadata import version

    result = invoke("--version")
    assert result.exit_code == 0 and result.output.strip() == f"posttrain {version('posttrain')}"


def test_bitsandbytes_kernels_notice_is_silenced_on_import():
    # bitsandbytes logs it on import on a CPU with AVX512-bf16 when `kernels` is missing (this test's machine)
    code = "from posttrain.cli.support import silence_kernels_notice; silence_kernels_notice(); import bitsandbytes"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "gemm_4bit_forward" not in found.stderr + found.stdout
