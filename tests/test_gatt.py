"""posttrain gatt and eval gatt on tiny-llama2: the built dialogue shows the instruction only where configured and
trains only the last assistant turn, the command runs end to end into a run that generate and merge load, --resume
keeps the built dialogues, and bad input exits 2 with the fix."""

import json
import shutil

import pytest
import torch
import yaml
from typer.testing import CliRunner

from posttrain.cli import app

torch.set_num_threads(1)
INSTRUCTION = "Figure: Napoleon."
DIALOGUE = {"turns": ["How do bees make honey?", "Why do bees dance?", "What do they do in winter?"]}
REPLIES = ["They turn nectar into honey.", "To show where flowers are."]


def gatt_recipe(tmp_path, name, data="builtin:gatt_dialogues", model=None, **section):
    recipe = {
        "method": "gatt",
        "model": {"name": str(name), "quantization": "none"} | (model or {}),
        "data": {"train": data, "max_length": 192},
        "gatt": {"max_new_tokens": 8, "max_turns": 2, "batch_size": 4} | section,
        "train": {"max_steps": 2, "learning_rate": 1e-2, "activation_checkpointing": False, "report_to": "none"},
        "output_dir": str(tmp_path / "gatt"),
    }
    path = tmp_path / "gatt.yaml"
    path.write_text("# posttrain gatt gatt.yaml\n" + yaml.safe_dump(recipe))
    return path


# Where the instruction must sit in the rendered text, per template and place.
SHOWN = {
    ("llama2", "system"): f"<<SYS>>\n{INSTRUCTION}\n<</SYS>>",
    ("llama2", "first_user"): f"[INST] {INSTRUCTION} {DIALOGUE['turns'][0]} [/INST]",
    ("chatml", "system"): f"<|im_start|>system\n{INSTRUCTION}<|im_end|>",
    ("chatml", "first_user"): f"<|im_start|>user\n{INSTRUCTION} {DIALOGUE['turns'][0]}<|im_end|>",
}


@pytest.mark.parametrize(("template", "where"), list(SHOWN))
def test_the_built_dialogue_shows_the_instruction_once_and_trains_only_the_last_reply(tmp_path, template, where):
    from trl import SFTConfig, SFTTrainer

    from posttrain.data.prepare import PreparedData
    from posttrain.methods import gatt
    from posttrain.methods.trl_backed import trl_config, trl_trainer
    from posttrain.recipe import load_recipe

    base = {"llama2": "tiny-llama2", "chatml": "smollm2-135m"}[template]  # tiny-llama2 has no ChatML tokens
    recipe = load_recipe(str(gatt_recipe(tmp_path, base, model={"chat_template": template}, instruction_in=where)))
    stage = gatt.prepare(recipe)
    dialogue = DIALOGUE | {"instruction": INSTRUCTION}
    messages = gatt.trained_context(dialogue, REPLIES, where) + [{"role": "assistant", "content": "Bees cluster."}]
    stage.data = PreparedData("gatt", [gatt.training_row({"messages": messages})])
    trainer = trl_trainer(SFTTrainer, trl_config(SFTConfig, stage), stage)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    tokenizer = stage.tokenizer

    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert ids == full["input_ids"]  # the whole dialogue, rendered as the template renders it
    mask = full["assistant_masks"]
    last_start = max(i for i in range(len(mask)) if mask[i] and (i == 0 or not mask[i - 1]))
    trained = [i for i, label in enumerate(labels) if label != -100]
    assert trained == [i for i in range(last_start, len(mask)) if mask[i]]  # the last assistant turn, all of it
    assert [ids[i] for i in trained] == [labels[i] for i in trained]
    answer = {"llama2": "Bees cluster. </s>", "chatml": "Bees cluster.<|im_end|>"}[template]
    assert tokenizer.decode([ids[i] for i in trained]) == answer  # with the end of turn: how a model learns to stop

    text = tokenizer.decode(ids)
    assert text.count(INSTRUCTION) == 1  # once, although every user turn carried it while sampling
    assert SHOWN[template, where] in text
    other = "first_user" if where == "system" else "system"
    assert SHOWN[template, other] not in text


@pytest.mark.parametrize("keep_cut_off", [False, True])
def test_a_dialogue_whose_every_last_reply_was_cut_off_is_kept_only_when_asked(keep_cut_off):
    from types import SimpleNamespace

    from posttrain.methods import gatt

    section = SimpleNamespace(keep_cut_off=keep_cut_off, missing_eos_penalty=1.0, instruction_in="system")
    dialogue = DIALOGUE | {"instruction": INSTRUCTION, "families": "figure"}
    candidates = [{"response": text, "score": score, "finished": False} for text, score in (("Bees", 0.1), ("Hm", 2.0))]
    record = gatt.record_of(dialogue, REPLIES, candidates, section)
    assert record["kept"] is keep_cut_off
    assert record["messages"][-1]["content"] == ("Hm" if keep_cut_off else "Bees")  # the best, or one shown as is


def test_sampling_puts_the_instruction_on_every_user_turn():
    from posttrain.methods.gatt import sampled_context

    context = sampled_context(DIALOGUE | {"instruction": INSTRUCTION}, REPLIES, turn=2)
    users = [m["content"] for m in context if m["role"] == "user"]
    assert users == [f"{INSTRUCTION} {turn}" for turn in DIALOGUE["turns"]]
    assert [m["content"] for m in context if m["role"] == "assistant"] == REPLIES


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_gatt_runs_end_to_end_and_the_run_loads_in_generate_and_merge(tmp_path, sft_run, reward_run, jsonl):
    data = jsonl(
        [{"messages": [{"role": "user", "content": t} for t in d]} for d in (["Hi", "What is 2 plus 2?"],) * 3]
    )
    path = gatt_recipe(
        tmp_path,
        sft_run,
        str(data),
        reward=str(reward_run),
        samples_per_dialogue=2,
        max_new_tokens=8,
        keep_cut_off=True,
    )
    result = CliRunner().invoke(app, ["gatt", str(path)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "gatt"
    built = read_jsonl(run / "gatt" / "dialogues.jsonl")
    assert len(built) == 3 and all(len(r["candidates"]) == 2 for r in built)
    for record in built:
        assert record["messages"][0] == {"role": "system", "content": record["instruction"]}
        users = [m["content"] for m in record["messages"] if m["role"] == "user"]
        assert users == ["Hi", "What is 2 plus 2?"]
        assert all(
            m["content"].startswith(record["instruction"]) for m in record["sampled_with"] if m["role"] == "user"
        )
        assert record["trained_turn"] == 2
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["gatt"]["dialogues"] == 3 and metrics["gatt"]["kept"] == sum(r["kept"] for r in built)

    out = tmp_path / "answers.jsonl"
    args = ["generate", str(run), "--prompts", "builtin:pirate_heldout", "--output", str(out), "--max-new-tokens", "4"]
    generated = CliRunner().invoke(app, args)
    assert generated.exit_code == 0, generated.output
    merged = CliRunner().invoke(app, ["merge", str(run), "--output", str(tmp_path / "merged")])
    assert merged.exit_code == 0, merged.output

    # --resume keeps the built dialogues: as if killed during the SFT, before its first checkpoint
    before = (run / "gatt" / "dialogues.jsonl").read_text()
    for lost in ("adapter", "checkpoints", "metrics.json"):
        shutil.rmtree(run / lost, ignore_errors=True) if lost != "metrics.json" else (run / lost).unlink()
    resumed = CliRunner().invoke(app, ["gatt", str(path), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert (run / "gatt" / "dialogues.jsonl").read_text() == before and (run / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("rows", "section", "message"),
    [
        ([{"prompt": "Hi"}, {"prompt": "Hello"}], {}, "gatt.chain: 3"),
        ([{"messages": [{"role": "assistant", "content": "Hi"}]}], {}, "no user turn"),
        ([{"prompt": "Hi"}], {"samples_per_dialogue": 2}, "takes gatt.reward"),
        ([{"prompt": "Hi"}], {"reward": "no/such/run"}, "no/such/run"),
    ],
)
def test_bad_input_exits_2_with_the_fix(tmp_path, jsonl, rows, section, message):
    result = CliRunner().invoke(app, ["gatt", str(gatt_recipe(tmp_path, "tiny-llama2", str(jsonl(rows)), **section))])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in result.output
    assert not (tmp_path / "gatt").exists()


def test_single_prompts_are_chained_into_dialogues():
    from posttrain.data.dialogues import chain

    assert chain([["a"], ["b"], ["c"], ["d", "e"], ["f"]], 2) == [["d", "e"], ["a", "b"], ["c", "f"]]


def test_eval_gatt_writes_its_report_with_compliance_per_turn(tmp_path, sft_run):
    report = tmp_path / "gatt.json"
    args = ["eval", "gatt", str(sft_run), "--turns", "2", "--dialogues", "2", "--max-new-tokens", "6"]
    result = CliRunner().invoke(app, args + ["--output", str(report)])
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert len(written["by_turn"]) == 2 and set(written["by_instruction"]) == {
        "language",
        "sign_off",
        "persona",
        "format",
    }
    for turn, value in enumerate(written["by_turn"]):  # each turn's share: the mean over the four instructions
        assert value == pytest.approx(sum(shares[turn] for shares in written["by_instruction"].values()) / 4)
    assert "plot:" in result.output


def test_the_compliance_checks_read_replies_as_a_person_would():
    from posttrain.evaluation.gatt import CHECKS

    assert CHECKS["language"][1]("Je pense que la mer est belle et calme pour vous.")
    assert not CHECKS["language"][1]("The sea is calm and the sky is blue.")
    assert CHECKS["sign_off"][1]("Sure thing. Fair winds!") and not CHECKS["sign_off"][1]("Fair winds! Sure.")
    assert CHECKS["persona"][1]("Arr, matey.") and not CHECKS["persona"][1]("Arrows fly.")
    assert CHECKS["format"][1]("Answer: four.") and not CHECKS["format"][1]("Four.")
