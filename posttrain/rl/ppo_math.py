"""The arithmetic of PPO for language models (InstructGPT / Llama 2), as small pure functions on tensors.

Shapes: (batch, response_tokens) unless said otherwise; `mask` is 1 on real response tokens, 0 on padding.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x: torch.Tensor, mask: torch.Tensor | None = None, shift_mean: bool = True) -> torch.Tensor:
    """Zero mean (unless shift_mean is off), unit variance over the masked entries."""
    mask = torch.ones_like(x) if mask is None else mask
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def kl_shaped_rewards(scores, logprobs, ref_logprobs, mask, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -beta * KL estimate (log pi - log pi_ref) on every token, the score on the last one.

    Returns (rewards, kl) where kl is the per-token estimate used.
    """
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    last = mask.sum(dim=1).long().clamp(min=1) - 1  # index of each response's final real token
    rewards[torch.arange(len(scores), device=rewards.device), last] += scores
    return rewards, kl


def adaptive_kl_beta(beta: float, kl: float, target: float, n_steps: int, horizon: int) -> float:
    """The KL coefficient for the next step, by the proportional controller of Ziegler et al. (2019), used in
    InstructGPT: beta grows while the measured KL (per response, summed over its tokens) is above `target` and
    shrinks while below, by at most 20% of n_steps / horizon per update (n_steps: responses in this step)."""
    error = min(max((kl - target) / target, -0.2), 0.2)
    return beta * (1 + error * n_steps / horizon)


def gae(rewards, values, mask, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response; returns (advantages, returns)."""
    advantages = torch.zeros_like(rewards)
    next_advantage = rewards.new_zeros(rewards.shape[0])  # on the rewards' device (a GPU), not the CPU
    next_value = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * mask[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t] * mask[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate; returns (loss, fraction of tokens where the clip was active)."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    return loss, masked_mean((clipped > unclipped).float(), mask)


def value_loss(values, old_values, returns, mask, clip: float) -> torch.Tensor:
    """Clipped value loss: the worse of the new value and one kept within `clip` of the old."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def entropy(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean per-token entropy of the policy's distributions (logits: batch x tokens x vocab)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return masked_mean(-(logp.exp() * logp).sum(-1), mask)


def combine_llama2_rewards(helpfulness, safety, is_safety_prompt, threshold: float = 0.15) -> torch.Tensor:
    """Llama 2's rule: the safety score where the prompt is tagged safety or the safety score (as a
    probability) is below `threshold`, else the helpfulness score. Scores are the models' logits, so
    Llama 2's LOGIT(sigmoid-score) is the score itself; whitening follows separately."""
    use_safety = is_safety_prompt | (torch.sigmoid(safety) < threshold)
    return torch.where(use_safety, safety, helpfulness)
