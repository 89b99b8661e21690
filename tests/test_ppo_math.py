"""PPO's arithmetic against values worked out by hand."""

import math

import pytest
import torch

from posttrain.rl.ppo_math import (
    adaptive_kl_beta,
    combine_llama2_rewards,
    entropy,
    gae,
    kl_shaped_rewards,
    policy_loss,
    value_loss,
    whiten,
)


def test_gae_on_a_three_step_response():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.4, 0.3]])
    mask = torch.ones(1, 3)
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # deltas: t2 = 1 - 0.3 = 0.7; t1 = 0 + 0.3 - 0.4 = -0.1; t0 = 0 + 0.4 - 0.5 = -0.1
    # A2 = 0.7; A1 = -0.1 + 0.5 * 0.7 = 0.25; A0 = -0.1 + 0.5 * 0.25 = 0.025
    torch.testing.assert_close(advantages, torch.tensor([[0.025, 0.25, 0.7]]))
    torch.testing.assert_close(returns, torch.tensor([[0.525, 0.65, 1.0]]))


def test_gae_ignores_padding_after_the_response():
    rewards = torch.tensor([[0.0, 1.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 9.9]])  # the padded position's value must not leak in
    advantages, _ = gae(rewards, values, torch.tensor([[1.0, 1.0, 0.0]]), gamma=0.9, lam=1.0)
    # A1 = 1 - 0.4 = 0.6; A0 = 0 + 0.9 * 0.4 - 0.5 + 0.9 * 0.6 = 0.4
    torch.testing.assert_close(advantages, torch.tensor([[0.4, 0.6, 0.0]]))


def gae_by_loop(rewards: list[float], values: list[float], gamma: float, lam: float) -> tuple[list, list]:
    """GAE of one response written out as the textbook recursion, in plain floats."""
    advantages, next_advantage, next_value = [0.0] * len(rewards), 0.0, 0.0
    for t in reversed(range(len(rewards))):
        delta = rewards[t] + gamma * next_value - values[t]
        next_advantage = delta + gamma * lam * next_advantage
        advantages[t], next_value = next_advantage, values[t]
    return advantages, [a + v for a, v in zip(advantages, values, strict=True)]


def test_gae_with_discount_and_lambda_below_one_matches_the_recursion_for_rows_of_different_lengths():
    rewards = torch.tensor([[0.3, -0.2, 0.5, 1.0], [0.1, 2.0, 7.0, 7.0]])
    values = torch.tensor([[0.5, 0.4, -0.3, 0.2], [0.6, -0.1, 9.0, 9.0]])  # row 2: two tokens, then padding
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    for row, length in enumerate((4, 2)):
        expected_adv, expected_ret = gae_by_loop(
            rewards[row, :length].tolist(), values[row, :length].tolist(), 0.9, 0.8
        )
        padding = [0.0] * (4 - length)
        torch.testing.assert_close(advantages[row], torch.tensor(expected_adv + padding))
        torch.testing.assert_close(returns[row], torch.tensor(expected_ret + padding))


def test_kl_penalty_ignores_log_probs_at_padded_positions():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-1.0, -1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -1.0, -4.0, 0.0], [-1.0, -1.0, -1.0, -1.0]])  # row 1 differs at its padding
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    rewards, kl = kl_shaped_rewards(torch.tensor([2.0, 3.0]), logprobs, ref, mask, beta=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 2.1, 0.0, 0.0], [0.0, 0.0, 0.0, 3.0]]))


def test_kl_penalty_on_every_token_and_score_on_the_last_real_one():
    logprobs = torch.tensor([[-1.0, -2.0, -1.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-1.0, -2.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = kl_shaped_rewards(torch.tensor([2.0, 3.0]), logprobs, ref, mask, beta=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0], [0.0, 1.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 2.0], [0.0, 2.9, 0.0]]))


def test_clipped_policy_loss():
    old = torch.zeros(1, 2)
    new = torch.tensor([[math.log(1.5), math.log(0.5)]])  # ratios 1.5 and 0.5
    advantages = torch.tensor([[1.0, -1.0]])
    loss, clip_fraction = policy_loss(new, old, advantages, torch.ones(1, 2), clip=0.2)
    # token 0: max(-1.5, -1.2) = -1.2 (clipped); token 1: max(0.5, 0.8) = 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 + 0.8) / 2)
    assert clip_fraction.item() == 1.0


def test_unclipped_policy_loss_is_the_plain_surrogate():
    loss, clip_fraction = policy_loss(
        torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([[2.0]]), torch.ones(1, 1), 0.2
    )
    assert loss.item() == pytest.approx(-2.0) and clip_fraction.item() == 0.0


def test_clipped_value_loss():
    values, old, returns = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 1.0]])
    # token 0: new 1.0 -> (1-2)^2 = 1; clipped 0.2 -> (0.2-2)^2 = 3.24; worse = 3.24. token 1: both 1.
    assert value_loss(values, old, returns, torch.ones(1, 2), clip=0.2).item() == pytest.approx(0.5 * (3.24 + 1) / 2)


def test_losses_average_over_real_tokens_only():
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    padded = torch.tensor([[0.0, 0.0, 50.0]])  # whatever sits at the padded position
    loss, clip_fraction = policy_loss(padded, torch.zeros(1, 3), torch.tensor([[1.0, 3.0, 9.0]]), mask, clip=0.2)
    assert loss.item() == pytest.approx(-2.0) and clip_fraction.item() == 0.0
    values, returns = torch.tensor([[1.0, 1.0, 40.0]]), torch.tensor([[0.0, 3.0, 0.0]])
    assert value_loss(values, values, returns, mask, clip=0.2).item() == pytest.approx(0.5 * (1 + 4) / 2)


def test_entropy_is_log_vocab_for_a_uniform_policy_and_zero_for_a_certain_one():
    logits = torch.zeros(1, 3, 8)
    logits[0, 1] = torch.tensor([100.0] + [0.0] * 7)  # token 1: certain
    logits[0, 2] = torch.randn(8) * 5  # token 2: padding, must not count
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert entropy(logits, mask).item() == pytest.approx((math.log(8) + 0) / 2, abs=1e-6)


def test_whiten_gives_zero_mean_unit_variance_over_the_mask():
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    out = whiten(x, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert out[0, :3].mean().item() == pytest.approx(0, abs=1e-6)
    assert out[0, :3].pow(2).mean().item() == pytest.approx(1, abs=1e-4)
    assert out[0, 3].item() == 0


def test_llama2_rule_picks_safety_when_tagged_or_unsafe_else_helpfulness():
    helpful = torch.tensor([1.0, 1.0, 1.0, 1.0])
    safety = torch.tensor([3.0, -3.0, 3.0, -1.0])  # sigmoid: 0.95 (safe), 0.047 (< 0.15: unsafe), 0.95, 0.27 (safe)
    tagged = torch.tensor([False, False, True, False])
    picked = combine_llama2_rewards(helpful, safety, tagged)
    torch.testing.assert_close(picked, torch.tensor([1.0, -3.0, 3.0, 1.0]))


def test_adaptive_kl_beta_rises_above_the_target_falls_below_and_moves_a_bounded_amount_per_step():
    beta, factors = 0.1, []
    for kl in (12.0, 12.0, 7.0, 6.0, 3.0, 0.0):  # target 6: far above, a little above, on it, below
        new = adaptive_kl_beta(beta, kl, target=6.0, n_steps=8, horizon=16)
        factors.append(new / beta)
        beta = new
    bound = 0.2 * 8 / 16  # the error is clipped to +-20%, scaled by the step's share of the horizon
    assert factors[0] == pytest.approx(1 + bound) and factors[1] == pytest.approx(1 + bound)
    assert factors[2] == pytest.approx(1 + (1 / 6) * 8 / 16)  # proportional inside the clip
    assert factors[3] == pytest.approx(1.0)
    assert factors[4] == pytest.approx(1 - bound) and factors[5] == pytest.approx(1 - bound)
