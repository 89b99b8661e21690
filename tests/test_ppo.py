"""posttrain ppo on tiny-llama2: what trains and what stays frozen, real learning, exact resume, two
processes under accelerate, and the bad inputs."""

import json
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.methods import ppo
from posttrain.methods.common import start_run
from posttrain.recipe import load_recipe
from posttrain.rl.ppo_trainer import PPOTrainer


def write(path, recipe: dict):
    path.write_text(f"# posttrain {recipe['method']} {path.name}\n" + yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny SFT run and a tiny reward run to start PPO from (trained once for this module)."""
    root = tmp_path_factory.mktemp("ppo-runs")
    common = {"model": {"name": "tiny-llama2", "quantization": "none"}}
    train = {"max_steps": 4, "activation_checkpointing": False, "report_to": "none"}
    for method, data, lr in (("sft", "builtin:pirate_sft", 1e-2), ("reward", "builtin:pirate_prefs", 1e-3)):
        recipe = write(
            root / f"{method}.yaml",
            common
            | {
                "method": method,
                "data": {"train": data, "max_length": 192},
                "train": train | {"learning_rate": lr},
                "output_dir": str(root / method),
            },
        )
        assert CliRunner().invoke(app, [method, str(recipe)]).exit_code == 0
    return root


def ppo_recipe(tmp_path, runs, name="ppo.yaml", quantization="none", **settings):
    recipe = {
        "method": "ppo",
        "model": {"name": str(runs / "sft"), "quantization": quantization},
        "data": {"train": "builtin:pirate_sft", "max_length": 192},
        "ppo": {
            "reward": str(runs / "reward"),
            "steps": 2,
            "batch_size": 4,
            "mini_batch_size": 2,
            "max_new_tokens": 8,
            "save_steps": 2,
        }
        | settings,
        "output_dir": str(tmp_path / name.removesuffix(".yaml")),
    }
    return write(tmp_path / name, recipe)


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_policy_and_value_train_while_reference_reward_and_base_stay_frozen(tmp_path, runs, quantization):
    recipe = load_recipe(str(ppo_recipe(tmp_path, runs, quantization=quantization, learning_rate=1e-2)))
    stage = ppo.prepare(recipe)
    start_run(stage, resume=False, overwrite=False)
    shared = ppo.build_shared_model(stage)
    before = {n: p.detach().clone() for n, p in shared.named_parameters()}
    from accelerate import Accelerator

    trainer = PPOTrainer(
        shared, stage.tokenizer, stage.data.prompts, recipe.ppo, stage.run, Accelerator(cpu=True), lambda _: 0
    )
    trainer.train()
    after = dict(shared.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    trainable = {n for n in before if ".policy." in n or ".value." in n or n.startswith("value_head")}
    assert {n for n in trainable if "lora_" in n or n.startswith("value_head")} <= changed
    assert changed <= trainable  # reference and reward adapters, reward head and base untouched
    assert any(".reference." in n for n in before) and any(".reward_reward." in n for n in before)


def forward_keeping(shared, batch: dict) -> tuple[tuple, int]:
    """The policy logits and values, and the bytes autograd keeps for the backward pass."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.nbytes) or x, lambda x: x):
        return shared(**batch), sum(saved)


def test_value_warmup_updates_the_value_network_and_leaves_the_policy_alone(tmp_path, runs):
    recipe = load_recipe(str(ppo_recipe(tmp_path, runs, learning_rate=1e-2, value_warmup_steps=1)))
    stage = ppo.prepare(recipe)
    start_run(stage, resume=False, overwrite=False)
    shared = ppo.build_shared_model(stage)
    from accelerate import Accelerator

    trainer = PPOTrainer(
        shared, stage.tokenizer, stage.data.prompts, recipe.ppo, stage.run, Accelerator(cpu=True), lambda _: 0
    )
    before = {n: p.detach().clone() for n, p in shared.named_parameters() if p.requires_grad}
    rollout, _ = trainer.rollout(0)
    trainer.optimise(rollout, 0)  # step 0 of 1 warm-up step
    after = dict(shared.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and all(".value." in n or n.startswith("value_head.") for n in changed)
    assert "value_head.weight" in changed
    rollout, _ = trainer.rollout(1)
    trainer.optimise(rollout, 1)  # after the warm-up the policy trains too
    assert any(".policy." in n and not torch.equal(before[n], after[n]) for n in before)


@pytest.mark.parametrize("quantization", ["none", "nf4"])
def test_checkpointed_layers_give_the_same_gradients_and_keep_far_less(tmp_path, runs, quantization):
    """Each decoder layer is recomputed in the backward pass under the adapter it ran with, although the policy
    and value passes use different adapters: the gradients are those of a run that keeps every activation."""
    recipe = load_recipe(str(ppo_recipe(tmp_path, runs, quantization=quantization)))
    stage = ppo.prepare(recipe)
    ids = torch.randint(3, 1000, (2, 24), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(24).expand(2, 24)}
    grads, kept = {}, {}
    for checkpointed in (False, True):
        recipe.ppo.activation_checkpointing = checkpointed
        shared = ppo.build_shared_model(stage).eval()
        (logits, values), kept[checkpointed] = forward_keeping(shared, batch)
        (logits.float().log_softmax(-1)[..., 7].mean() + values.mean()).backward()
        grads[checkpointed] = {n: p.grad for n, p in shared.named_parameters() if p.requires_grad}
    assert any(".value." in n for n in grads[True]) and any(".policy." in n for n in grads[True])
    for name, grad in grads[False].items():
        torch.testing.assert_close(grads[True][name], grad, rtol=1e-5, atol=1e-7, msg=name)
    assert kept[True] < kept[False] / 2  # the layers' tensors are recomputed, not kept


def test_rollouts_are_the_same_with_checkpointed_layers(tmp_path, runs):
    """Generation keeps its KV cache with checkpointed layers (transformers before 5.24 dropped it for layers in
    training mode, which the checkpointed ones stay in): greedy answers equal those without checkpointing."""
    recipe = load_recipe(str(ppo_recipe(tmp_path, runs)))
    stage = ppo.prepare(recipe)
    query = stage.tokenizer(["[INST] What is the capital of Japan? [/INST]"], return_tensors="pt")
    answers = {}
    for checkpointed in (False, True):
        recipe.ppo.activation_checkpointing = checkpointed
        shared = ppo.build_shared_model(stage).eval()
        answers[checkpointed] = shared.generate(**query, do_sample=False, max_new_tokens=12, pad_token_id=0)
        assert all(layer.gradient_checkpointing for layer in shared.checkpointed_layers)  # back on for training
    assert len(shared.checkpointed_layers) == 2
    assert torch.equal(answers[True], answers[False])


def test_resume_reproduces_the_uninterrupted_run(tmp_path, runs):
    # an adaptive KL coefficient, so the checkpoint must carry its current value too
    path = ppo_recipe(tmp_path, runs, steps=4, save_steps=2, kl_target=0.01, kl_horizon=4)
    assert CliRunner().invoke(app, ["ppo", str(path)]).exit_code == 0
    run = tmp_path / "ppo"
    whole = json.loads((run / "metrics.json").read_text())["steps"]
    whole_weights = load_file(run / "adapter" / "adapter_model.safetensors")
    shutil.rmtree(run / "checkpoints" / "checkpoint-4")  # as if killed after the step-2 checkpoint
    shutil.rmtree(run / "adapter")
    (run / "metrics.json").unlink()
    result = CliRunner().invoke(app, ["ppo", str(path), "--resume"])
    assert result.exit_code == 0, result.output
    resumed = json.loads((run / "metrics.json").read_text())["steps"]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    assert len({r["kl_beta"] for r in whole}) > 1
    # the run is bit-reproducible, so resuming must be too: any state the checkpoint rounds or drops shows here
    for a, b in zip(whole, resumed, strict=True):
        for key in ("score", "kl", "kl_beta", "policy_loss", "value_loss", "entropy"):
            assert a[key] == b[key], (a["step"], key)
    resumed_weights = load_file(run / "adapter" / "adapter_model.safetensors")
    assert whole_weights.keys() == resumed_weights.keys()
    assert all(torch.equal(whole_weights[name], resumed_weights[name]) for name in whole_weights)
    assert len((run / "samples.jsonl").read_text().splitlines()) == 4 * 4


# ---------------------------------------------------------------- bad input: exit 2, nothing written


def assert_refused(tmp_path, path, message):
    result = CliRunner().invoke(app, ["ppo", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert message in result.output
    assert not (tmp_path / "ppo").exists()


def test_missing_reward(tmp_path, runs):
    assert_refused(tmp_path, ppo_recipe(tmp_path, runs, reward=""), "ppo.reward is required")


def test_reward_that_is_not_a_reward_run(tmp_path, runs):
    assert_refused(tmp_path, ppo_recipe(tmp_path, runs, reward=str(runs / "sft")), "is not a reward run")


def test_reward_run_on_another_base_model(tmp_path, runs):
    other = tmp_path / "other-reward"
    shutil.copytree(runs / "reward", other)
    record = yaml.safe_load((other / "recipe.yaml").read_text())
    record["base_model"] = "smollm2-135m"
    (other / "recipe.yaml").write_text(yaml.safe_dump(record))
    assert_refused(tmp_path, ppo_recipe(tmp_path, runs, reward=str(other)), "PPO shares one base model")


def test_prompts_longer_than_max_length(tmp_path, runs):
    path = ppo_recipe(tmp_path, runs)
    recipe = yaml.safe_load(path.read_text())
    recipe["data"]["max_length"] = 16
    assert_refused(tmp_path, write(path, recipe), "prompts are longer than data.max_length - ppo.max_new_tokens = 8")


@pytest.mark.parametrize("on_too_long", ["drop", "error"])
def test_prompts_too_long_for_a_response_are_dropped_or_refused(tmp_path, runs, on_too_long):
    path = ppo_recipe(tmp_path, runs)
    recipe = yaml.safe_load(path.read_text())
    lengths = sorted(prompt_lengths(runs, recipe))
    recipe["data"]["max_length"] = lengths[len(lengths) // 2] + recipe["ppo"]["max_new_tokens"]
    recipe["data"]["on_too_long"] = on_too_long
    result = CliRunner().invoke(app, ["ppo", str(write(path, recipe)), "--dry-run"])
    longer = sum(n > lengths[len(lengths) // 2] for n in lengths)
    if on_too_long == "drop":
        assert result.exit_code == 0, result.output
        assert f"{longer} of {len(lengths)} prompts are longer" in result.output and "dropped" in result.output
        assert f"prompts     {len(lengths) - longer} from" in result.output
    else:
        assert result.exit_code == 2 and "set data.on_too_long: drop" in result.output


def prompt_lengths(runs, recipe) -> list[int]:
    from posttrain.data.prepare import chat_length
    from posttrain.data.prompts import read_prompts
    from posttrain.models.loading import load_tokenizer, resolve_model

    tokenizer = load_tokenizer(resolve_model(str(runs / "sft")), "model")
    prompts, _ = read_prompts(recipe["data"]["train"], tokenizer, max_length=10**6)
    return [chat_length(tokenizer, p["prompt"], add_generation_prompt=True) for p in prompts]


def test_safety_tagged_prompts_need_a_safety_reward_run(tmp_path, runs):
    path = ppo_recipe(tmp_path, runs)
    recipe = yaml.safe_load(path.read_text())
    recipe["data"]["train"] = "builtin:pirate_prompts"
    assert_refused(tmp_path, write(path, recipe), "6 prompts are tagged safety")


def test_two_reward_runs_with_safety_prompts(tmp_path, runs):
    path = ppo_recipe(tmp_path, runs, reward={"helpfulness": str(runs / "reward"), "safety": str(runs / "reward")})
    recipe = yaml.safe_load(path.read_text())
    recipe["data"]["train"] = "builtin:pirate_prompts"
    result = CliRunner().invoke(app, ["ppo", str(write(path, recipe))])
    assert result.exit_code == 0, result.output
    assert "6 tagged safety" in result.output
