"""`posttrain ppo`: RLHF with PPO on one 4-bit base shared by the policy, reference, value and reward adapters.

model.name (or model.adapter) is the SFT run the policy starts from; ppo.reward names the reward run(s).
All settings live in the recipe's `ppo:` section (posttrain.method_sections.PPOSection); the trainer is
posttrain.rl.ppo_trainer, its arithmetic posttrain.rl.ppo_math.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable

from posttrain.methods.common import Stage, seed_everything
from posttrain.precision import keep_trainable_fp32
from posttrain.recipe import Recipe
from posttrain.rl.setup import heldout_check, load_base_and_lora, prepare_rl_stage


def prepare(recipe: Recipe, echo: Callable[[str], None] = print) -> Stage:
    s = recipe.ppo
    stage = prepare_rl_stage(recipe, prompt_room=s.max_new_tokens, echo=echo)
    stage.details.append(
        f"ppo         {s.steps} steps x {s.batch_size} prompts, {s.ppo_epochs} epochs of {s.mini_batch_size}, "
        f"kl_beta {s.kl_beta}"
        + (f" adapting to a KL of {s.kl_target} (horizon {s.kl_horizon})" if s.kl_target is not None else "")
        + f", max_new_tokens {s.max_new_tokens}"
        + (f", ptx_coef {s.ptx_coef}" if s.ptx_coef else "")
    )
    if s.ptx_coef:
        from posttrain.rl.ptx import read_ptx

        stage.data.ptx, line = read_ptx(s.ptx_data, stage.tokenizer, recipe.data.max_length)
        stage.details.append(line)
    return stage


def build_shared_model(stage: Stage):
    from peft import prepare_model_for_kbit_training

    from posttrain.rl.shared_model import SharedModel

    seed_everything(stage.recipe.ppo.seed)  # a new policy adapter's init follows the recipe's seed
    base, lora = load_base_and_lora(stage)
    if getattr(base, "hf_quantizer", None) is not None:
        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    shared = SharedModel.build(base, lora, stage.adapter, stage.data.rewards)
    keep_trainable_fp32(shared)
    if stage.recipe.ppo.activation_checkpointing:
        shared.checkpoint_layers()
    return shared


def train(stage: Stage, *, resume: bool, echo: Callable[[str], None] = print) -> dict:
    from accelerate import Accelerator

    from posttrain.rl.ppo_trainer import PPOTrainer

    mixed = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[stage.precision]
    accelerator = Accelerator(mixed_precision=mixed, cpu=stage.hardware.device == "cpu")
    shared = build_shared_model(stage)
    trainer = PPOTrainer(
        shared, stage.tokenizer, stage.data.prompts, stage.recipe.ppo, stage.run, accelerator, echo, stage.data.ptx
    )
    if resume:
        trainer.load_checkpoint(stage.run.resume_from(accelerator.is_main_process))
    if stage.before_train is not None:
        stage.before_train(trainer)
    history = trainer.train()
    metrics = {"steps": history, "final": average(history[-3:]), "first": average(history[:3])}
    metrics["fp16_skipped_updates"] = trainer.skipped_updates  # overflows the loss scaler handled by skipping
    if accelerator.is_main_process:
        save_policy(trainer.shared, stage)
    del trainer, shared  # the held-out check loads its models one at a time, on memory this run no longer needs
    accelerator.free_memory()
    accelerator.wait_for_everyone()  # every process checks its share of the held-out prompts on the saved adapter
    metrics["heldout"] = heldout_check(stage, {record["step"]: record["kl"] for record in history}, echo)
    if accelerator.is_main_process:
        stage.run.write_metrics(metrics)
    accelerator.wait_for_everyone()
    return metrics


def average(records: list[dict]) -> dict:
    keys = [k for k, v in records[0].items() if k != "step" and not isinstance(v, bool)]
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
