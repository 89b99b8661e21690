"""`posttrain ppo`: RLHF with PPO on one 4-bit base shared by the policy, reference, value and reward adapters.

model.name (or model.adapter) is the SFT run the policy starts from; ppo.reward names the reward run(s).
All settings live in the recipe's `ppo:` section (see posttrain.recipe.PPOSection for defaults).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from posttrain.data.prompts import read_prompts, too_long_message
from posttrain.errors import UserError
from posttrain.methods.common import Stage, prepare_stage, seed_everything, start_run
from posttrain.models.loading import load_base_model, method_of_run, resolve_model
from posttrain.precision import keep_trainable_fp32
from posttrain.recipe import Recipe


def reward_runs(spec: str | dict[str, str]) -> dict[str, str]:
    """{role: run} for one reward run ("reward") or Llama 2's pair (helpfulness, safety)."""
    return dict(spec) if isinstance(spec, dict) else {"reward": spec}


def check_reward_run(run: str, stage: Stage, key: str) -> Path:
    """The adapter folder of a reward run trained on the same base model and tokenizer as the policy."""
    from transformers import AutoTokenizer

    ref = resolve_model(run)
    if not ref.is_run or method_of_run(ref.adapter.parent) != "reward":
        raise UserError(
            f"{key}: {run} is not a reward run. Train one with `posttrain reward RECIPE` and name its run folder here."
        )
    if ref.base != stage.model.base:
        raise UserError(
            f"{key}: {run} was trained on {ref.name}, but the policy's base is {stage.model.name}; "
            "PPO shares one base model, so both runs must use the same one."
        )
    if AutoTokenizer.from_pretrained(ref.tokenizer).get_vocab() != stage.tokenizer.get_vocab():
        raise UserError(f"{key}: {run} uses a different tokenizer from the policy; retrain it from the same base.")
    return ref.adapter


def prepare(recipe: Recipe, prompt_room: int = 0, echo: Callable[[str], None] = print):
    """The stage, the prompts and the reward runs of a ppo or rs recipe, all checked before any weights load.
    `prompt_room` tokens of data.max_length are kept free for the response."""
    stage = prepare_stage(recipe)
    section = recipe.method  # ppo or rs: both sections hold reward and sampling settings
    runs = reward_runs(getattr(recipe, section).reward)
    rewards = {
        role: check_reward_run(run, stage, f"{section}.reward" + (f".{role}" if role != "reward" else ""))
        for role, run in runs.items()
    }
    prompts = prompts_that_fit(recipe, stage.tokenizer, prompt_room, echo)
    tagged = sum(p["safety"] for p in prompts)
    if tagged and "safety" not in rewards:
        raise UserError(
            f"{recipe.data.train}: {tagged} prompts are tagged safety, but {section}.reward names no "
            f"safety reward run. Give {section}.reward: {{helpfulness: RUN, safety: RUN}}, or drop the tags."
        )
    return stage, prompts, rewards


def prompts_that_fit(recipe: Recipe, tokenizer, prompt_room: int, echo: Callable[[str], None]) -> list[dict]:
    """The recipe's prompts that leave `prompt_room` tokens of data.max_length for the response; longer ones are
    dropped and reported (data.on_too_long: drop) or refused (error)."""
    limit, section = recipe.data.max_length - prompt_room, recipe.method
    prompts, too_long = read_prompts(recipe.data.train, tokenizer, limit)
    if not too_long:
        return prompts
    wording = f"data.max_length - {section}.max_new_tokens = {limit}" if prompt_room else None
    message = too_long_message(list(too_long.values()), len(prompts), limit, wording)
    if recipe.data.on_too_long != "drop" or len(too_long) == len(prompts):
        how = "raise data.max_length" + (f" or lower {section}.max_new_tokens" if prompt_room else "")
        raise UserError(f"{message} To use them, {how}; to leave them out, set data.on_too_long: drop.")
    echo(f"data        {message.removesuffix('.')}: dropped (data.on_too_long: drop)")
    return [prompt for index, prompt in enumerate(prompts) if index not in too_long]


def plan_lines(stage: Stage, prompts: list[dict], rewards: dict[str, Path]) -> list[str]:
    return stage.plan_lines() + [
        f"prompts     {len(prompts)} from {stage.recipe.data.train} ({sum(p['safety'] for p in prompts)} "
        "tagged safety)",
        f"reward      {', '.join(f'{role}: {path.parent}' for role, path in rewards.items())}",
    ]


def load_base(stage: Stage):
    """The (4-bit) base every adapter of PPO or rejection sampling sits on, and the config of a new LoRA."""
    from peft import LoraConfig

    r = stage.recipe
    base = load_base_model(stage.model, r.model.quantization, r.model.double_quant, stage.precision)
    base.config.pad_token_id = stage.tokenizer.pad_token_id
    lora = LoraConfig(
        r=r.lora.r,
        lora_alpha=r.lora.alpha,
        lora_dropout=r.lora.dropout,
        target_modules=r.lora.target_modules,
        task_type="CAUSAL_LM",
    )
    return base, lora


def build_shared_model(stage: Stage, rewards: dict[str, Path]):
    from peft import prepare_model_for_kbit_training

    from posttrain.rl.shared_model import SharedModel

    seed_everything(stage.recipe.ppo.seed)  # a new policy adapter's init follows the recipe's seed
    base, lora = load_base(stage)
    if getattr(base, "hf_quantizer", None) is not None:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    shared = SharedModel.build(base, lora, stage.adapter, rewards)
    keep_trainable_fp32(shared)
    if stage.recipe.ppo.activation_checkpointing:
        shared.checkpoint_layers()
    return shared


def run(
    recipe: Recipe,
    *,
    resume: bool = False,
    overwrite: bool = False,
    dry_run: bool = False,
    echo: Callable[[str], None] = print,
) -> dict | None:
    from accelerate import Accelerator

    from posttrain.rl.ppo import PPOTrainer

    stage, prompts, rewards = prepare(recipe, prompt_room=recipe.ppo.max_new_tokens, echo=echo)
    stage.run.check_writable(resume=resume, overwrite=overwrite)
    s = recipe.ppo
    for line in plan_lines(stage, prompts, rewards) + [
        f"ppo         {s.steps} steps x {s.batch_size} prompts, {s.ppo_epochs} epochs of {s.mini_batch_size}, "
        f"kl_beta {s.kl_beta}, max_new_tokens {s.max_new_tokens}",
    ]:
        echo(line)
    if dry_run:
        echo("dry run: recipe, runs and prompts are valid; no weights were loaded and nothing was written.")
        return None
    start_run(stage, resume=resume, overwrite=overwrite)
    mixed = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[stage.precision]
    accelerator = Accelerator(mixed_precision=mixed, cpu=stage.hardware.device == "cpu")
    trainer = PPOTrainer(build_shared_model(stage, rewards), stage.tokenizer, prompts, s, stage.run, accelerator, echo)
    if resume:
        trainer.load_checkpoint(stage.run.resume_from(accelerator.is_main_process))
    history = trainer.train()
    metrics = {"steps": history, "final": average(history[-3:]), "first": average(history[:3])}
    if accelerator.is_main_process:
        save_policy(trainer.shared, stage)
        stage.run.write_metrics(metrics)
    accelerator.wait_for_everyone()
    stage.run.release()
    return metrics


def average(records: list[dict]) -> dict:
    keys = [k for k in records[0] if k != "step"]
    return {k: sum(r[k] for r in records) / len(records) for k in keys}


def save_policy(shared, stage: Stage) -> None:
    """The policy adapter becomes the run's adapter/ (the value network is kept in its checkpoints)."""
    from posttrain.rl.shared_model import POLICY

    staging = stage.run.path / "adapter.partial"
    shared.peft.save_pretrained(str(staging), selected_adapters=[POLICY])
    shutil.rmtree(stage.run.adapter, ignore_errors=True)
    (staging / POLICY).rename(stage.run.adapter)
    shutil.rmtree(staging)
    stage.tokenizer.save_pretrained(stage.run.path)
