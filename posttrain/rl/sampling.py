"""Sampling responses from the policy and scoring them with the reward run(s): what PPO's rollout and rejection
sampling share.

Sequences are left-padded queries followed by right-padded responses; positions come from the attention mask.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from posttrain.inference.generation import encode_chats
from posttrain.rl.ppo_math import combine_llama2_rewards


@dataclass
class Samples:
    """Sampled responses to a batch of prompts (each prompt `per_prompt` times, consecutive)."""

    batch: dict  # input_ids, attention_mask, position_ids of query + response
    query_length: int
    response_mask: torch.Tensor  # 1 on response tokens up to and including the first EOS
    has_eos: torch.Tensor
    prompts: list[dict]  # the prompt rows, repeated per_prompt times
    responses: list[str]  # decoded, without special tokens

    @property
    def last_index(self) -> torch.Tensor:
        """Position of each sequence's last real token, where a reward run reads its score."""
        return self.query_length + self.response_mask.sum(dim=1) - 1

    @property
    def safety(self) -> torch.Tensor:
        return torch.tensor([row["safety"] for row in self.prompts], device=self.response_mask.device)


def response_mask_of(responses: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of real response tokens, up to and including the first EOS; whether each response has an EOS)."""
    is_eos = responses == eos_id
    has_eos = is_eos.any(dim=1)
    first_eos = torch.where(has_eos, is_eos.int().argmax(dim=1), responses.shape[1] - 1)
    positions = torch.arange(responses.shape[1], device=responses.device)
    return (positions <= first_eos.unsqueeze(1)).long(), has_eos


def sample(shared, tokenizer, rows: list[dict], settings, device, per_prompt: int = 1) -> Samples:
    """Sample `per_prompt` responses to each prompt with the policy, using the recipe's generation settings.
    The caller seeds torch's generator (so a resumed run draws the same samples)."""
    query = encode_chats(tokenizer, [row["prompt"] for row in rows]).to(device)
    output = shared.generate(
        **query,
        do_sample=True,
        num_return_sequences=per_prompt,
        max_new_tokens=settings.max_new_tokens,
        temperature=settings.temperature,
        top_k=settings.top_k,
        top_p=settings.top_p,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    query_length = query["input_ids"].shape[1]
    responses = output[:, query_length:]
    response_mask, has_eos = response_mask_of(responses, tokenizer.eos_token_id)
    responses = responses.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    attention = torch.cat([query["attention_mask"].repeat_interleave(per_prompt, dim=0), response_mask], dim=1)
    batch = {
        "input_ids": torch.cat([output[:, :query_length], responses], dim=1),
        "attention_mask": attention,
        "position_ids": (attention.cumsum(dim=1) - 1).clamp(min=0),
    }
    return Samples(
        batch,
        query_length,
        response_mask,
        has_eos,
        [row for row in rows for _ in range(per_prompt)],
        tokenizer.batch_decode(responses, skip_special_tokens=True),
    )


def reward_scores(shared, samples: Samples, roles: list[str], safety_threshold: float) -> torch.Tensor:
    """The reward run's score of each sample; with two runs, Llama 2's helpfulness/safety rule picks one."""
    if roles == ["reward"]:
        return shared.scores("reward", samples.batch, samples.last_index)
    helpful, safe = (shared.scores(role, samples.batch, samples.last_index) for role in ("helpfulness", "safety"))
    return combine_llama2_rewards(helpful, safe, samples.safety, safety_threshold)
