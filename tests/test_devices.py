"""Every tensor posttrain creates lands on the device of the data it works with, checked without a GPU.

A tensor made on the CPU next to inputs on a GPU crashes only on the GPU. Two traps catch that on a CPU: inputs
on the `meta` device (mixing in a CPU tensor raises "Tensor on device cpu is not on the expected device meta"),
and, where real weights must run, a torch function mode that fails on any tensor factory called from posttrain's
own code without a `device=` (draws from an explicit CPU generator excepted: they are index orders).
"""

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import posttrain
from posttrain.rl import ppo_math
from posttrain.rl.sampling import Samples, response_mask_of

FACTORIES = {
    torch.zeros, torch.ones, torch.empty, torch.full, torch.arange, torch.tensor, torch.as_tensor, torch.rand,
    torch.randn, torch.randint, torch.randperm, torch.linspace, torch.eye,
}  # fmt: skip
POSTTRAIN = str(Path(posttrain.__file__).parent)


class DeviceTrap(TorchFunctionMode):
    """Fails on a tensor factory called without `device=` from a file under `watched`."""

    def __init__(self, watched: str = POSTTRAIN):
        super().__init__()
        self.watched = watched

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        caller = sys._getframe(1).f_code.co_filename
        placed = "device" in kwargs or "generator" in kwargs
        if func in FACTORIES and caller.startswith(self.watched) and not placed:
            raise AssertionError(f"torch.{func.__name__} without device= at {caller}:{sys._getframe(1).f_lineno}")
        return func(*args, **kwargs)


def meta(*shape, dtype=torch.float32):
    return torch.empty(*shape, dtype=dtype, device="meta")


def test_the_trap_catches_a_tensor_made_without_a_device():
    with pytest.raises(AssertionError, match="torch.zeros without device="), DeviceTrap(watched=__file__):
        torch.zeros(3)
    with DeviceTrap(watched=__file__):
        torch.zeros(3, device="cpu")
    with pytest.raises(RuntimeError, match="expected device meta"):
        meta(3) + torch.zeros(3)


def test_ppo_math_stays_on_the_device_of_its_inputs():
    rewards, values, mask, scores = meta(2, 5), meta(2, 5), meta(2, 5), meta(2)
    advantages, returns = ppo_math.gae(rewards, values, mask, gamma=1.0, lam=0.95)
    shaped, kl = ppo_math.kl_shaped_rewards(scores, meta(2, 5), meta(2, 5), mask, beta=0.1)
    outputs = [advantages, returns, shaped, kl, ppo_math.whiten(rewards, mask), ppo_math.whiten(scores)]
    outputs += list(ppo_math.policy_loss(meta(2, 5), meta(2, 5), advantages, mask, clip=0.2))
    outputs.append(ppo_math.value_loss(values, meta(2, 5), returns, mask, clip=0.2))
    outputs.append(ppo_math.entropy(meta(2, 5, 11), mask))
    outputs.append(ppo_math.combine_llama2_rewards(scores, meta(2), meta(2, dtype=torch.bool)))
    assert all(out.device.type == "meta" for out in outputs)


def test_response_bookkeeping_stays_on_the_device_of_the_responses():
    mask, has_eos = response_mask_of(meta(2, 6, dtype=torch.long), eos_id=2)
    samples = Samples({}, 4, mask, has_eos, [{"safety": False}, {"safety": True}], ["a", "b"])
    assert {t.device.type for t in (mask, has_eos, samples.safety)} == {"meta"}


def test_a_ppo_step_makes_every_tensor_on_its_device(rl_recipe, ppo_trainer):
    ptx = {"ptx_coef": 0.5, "ptx_data": "builtin:pirate_sft"}  # PPO-ptx's batches too
    trainer = ppo_trainer(rl_recipe("ppo", batch_size=2, mini_batch_size=1, **ptx))
    with DeviceTrap():
        history = trainer.train()
    assert len(history) == 1


def test_a_rejection_sampling_round_makes_every_tensor_on_its_device(rl_recipe):
    from posttrain.methods import rs
    from posttrain.recipe import load_recipe

    stage = rs.prepare(load_recipe(str(rl_recipe("rs"))))
    with DeviceTrap():
        selected = rs.sample_and_select(stage, stage.data.prompts[:2], stage.data.rewards, stage.adapter, number=1)
    assert len(selected) == 2


def test_generation_and_winrate_judging_make_every_tensor_on_its_device(sft_run, reward_run):
    from posttrain.evaluation.winrate import judge_pairs
    from posttrain.inference.generation import GenerationSettings, Reply, generate_replies_to_chats
    from posttrain.models.loading import load_run_model

    model, tokenizer = load_run_model(str(sft_run))
    chats = [[{"role": "user", "content": "Where be the treasure?"}]] * 2
    with DeviceTrap():
        settings = GenerationSettings(max_new_tokens=4, do_sample=True)
        replies = generate_replies_to_chats(model, tokenizer, chats, settings)
        pairs = judge_pairs(str(reward_run), chats, replies, [Reply("Arr.", 2, True)] * 2, tie_margin=0.0)
    assert len(pairs) == 2
