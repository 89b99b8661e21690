"""PPO's passes agree with each other: every log-probability is that of the distribution the tokens were sampled
from (the tempered one), every pass runs under the same autocast, and a checkpoint keeps the fp16 loss scale."""

import pytest
import torch
from accelerate import Accelerator
from typer.testing import CliRunner

from posttrain.cli import app


def test_log_probs_are_those_of_the_tempered_sampling_distribution(rl_recipe, ppo_trainer):
    trainer = ppo_trainer(rl_recipe("ppo", temperature=0.5))
    trainer.shared.eval()
    rollout, _ = trainer.rollout(0)
    with torch.no_grad():
        logits, _ = trainer.model(**rollout.batch)
    q, tokens = rollout.query_length, rollout.batch["input_ids"][:, rollout.query_length :]
    tempered = torch.log_softmax(logits[:, q - 1 : -1].float() / 0.5, dim=-1).gather(-1, tokens.unsqueeze(-1))
    mask = rollout.response_mask.bool()
    torch.testing.assert_close(rollout.logprobs[mask], tempered.squeeze(-1)[mask])


@pytest.mark.parametrize("setting", [{"top_k": 50}, {"top_p": 0.9}])
def test_top_k_and_top_p_are_refused_for_ppo(rl_recipe, setting):
    result = CliRunner().invoke(app, ["ppo", str(rl_recipe("ppo", **setting)), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"ppo.{next(iter(setting))}" in result.output and "temperature" in result.output


def test_rejection_sampling_keeps_top_k_and_top_p(rl_recipe):
    result = CliRunner().invoke(app, ["rs", str(rl_recipe("rs", top_k=50, top_p=0.9)), "--dry-run"])
    assert result.exit_code == 0, result.output


@pytest.fixture
def fresh_accelerator():
    """An Accelerator of the given mixed precision (accelerate keeps one state per process: reset it around)."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield lambda mixed_precision: Accelerator(cpu=True, mixed_precision=mixed_precision)
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_the_policy_starts_at_zero_kl_to_the_reference(rl_recipe, ppo_trainer, fresh_accelerator, mixed_precision):
    """The policy starts as the reference, so at step 0 both give the same log-probabilities, provided both
    passes run at the same precision (here also bf16 autocast on the CPU, the mixed-precision path)."""
    accelerator = fresh_accelerator(mixed_precision)
    trainer = ppo_trainer(rl_recipe("ppo", temperature=0.7), accelerator)
    trainer.shared.eval()
    rollout, _ = trainer.rollout(0)
    assert rollout.kl.abs().max().item() < 1e-6
    stats = trainer.optimise(rollout, 0)
    assert all(torch.isfinite(torch.tensor(value)) for value in stats.values())


def test_a_checkpoint_keeps_the_fp16_loss_scale(rl_recipe, ppo_trainer):
    """fp16 training scales the loss by a factor the GradScaler adapts as it goes; a resumed run must go on with
    the same factor, or its steps differ from the uninterrupted run's."""
    trainer = ppo_trainer(rl_recipe("ppo"))
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    trainer.accelerator.scaler.scale(torch.ones(1))  # the scaler makes its state on first use
    trainer.accelerator.scaler.update(new_scale=64.0)
    trainer.save_checkpoint(1)
    expected = trainer.accelerator.scaler.state_dict()
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    trainer.load_checkpoint(trainer.run.checkpoints / "checkpoint-1")
    assert trainer.accelerator.scaler.state_dict() == expected and expected["scale"] == 64.0
