"""Sampling responses from the policy and scoring them with the reward run(s): what PPO's rollout and rejection
sampling share.

Sequences are left-padded queries followed by right-padded responses; positions come from the attention mask.
A reward run reads its score where TRL's RewardTrainer trained it: at the last token of the whole rendered
conversation, which for ChatML is the newline the template puts after <|im_end|>, not the EOS the policy stops at.
So the reward runs score each sequence with the template's ending appended after its EOS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    scoring: tuple[dict, torch.Tensor] | None = field(default=None)  # what reward runs read: see scoring_batch()

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


def template_ending(tokenizer) -> list[int]:
    """The tokens the chat template puts after an assistant turn's EOS (ChatML: a newline; Llama 2: none), taken
    from a rendered conversation tokenized as RewardTrainer tokenizes it."""
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    ids = tokenizer(tokenizer.apply_chat_template(chat, tokenize=False), add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id not in ids:
        return []
    return ids[len(ids) - ids[::-1].index(tokenizer.eos_token_id) :]


def sequence_batch(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict:
    """What the networks read of left-padded sequences: ids, mask, and positions counted from the first real token."""
    position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}


def scoring_batch(samples: Samples, endings: list[list[int]], pad_id: int) -> tuple[dict, torch.Tensor]:
    """The sequences with each one's `endings` tokens placed right after its last response token, and the position
    of each one's final token (where the reward runs read their scores)."""
    q, lengths = samples.query_length, samples.response_mask.sum(dim=1)
    responses, mask = samples.batch["input_ids"][:, q:], samples.response_mask
    extra = max(len(ending) for ending in endings)
    ids = torch.cat([responses, responses.new_full((len(endings), extra), pad_id)], dim=1)
    mask = torch.cat([mask, mask.new_zeros(len(endings), extra)], dim=1)
    for row, (ending, length) in enumerate(zip(endings, lengths.tolist(), strict=True)):
        if ending:
            ids[row, length : length + len(ending)] = torch.tensor(ending, device=ids.device)
            mask[row, length : length + len(ending)] = 1
    attention = torch.cat([samples.batch["attention_mask"][:, :q], mask], dim=1)
    batch = sequence_batch(torch.cat([samples.batch["input_ids"][:, :q], ids], dim=1), attention)
    added = torch.tensor([len(ending) for ending in endings], device=ids.device)
    return batch, q + lengths + added - 1


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
    return samples_of(output, query, tokenizer, rows, settings, per_prompt)


def samples_of(output: torch.Tensor, query, tokenizer, rows: list[dict], settings, per_prompt: int = 1) -> Samples:
    """The bookkeeping of generate()'s output: response masks, the batch the networks read, what is scored."""
    query_length = query["input_ids"].shape[1]
    responses = output[:, query_length:]
    response_mask, has_eos = response_mask_of(responses, tokenizer.eos_token_id)
    responses = responses.masked_fill(response_mask == 0, tokenizer.pad_token_id)
    attention = torch.cat([query["attention_mask"].repeat_interleave(per_prompt, dim=0), response_mask], dim=1)
    batch = sequence_batch(torch.cat([output[:, :query_length], responses], dim=1), attention)
    samples = Samples(
        batch,
        query_length,
        response_mask,
        has_eos,
        [row for row in rows for _ in range(per_prompt)],
        tokenizer.batch_decode(responses, skip_special_tokens=True),
    )
    samples.scoring = scoring_batch(samples, scoring_endings(tokenizer, has_eos, settings), tokenizer.pad_token_id)
    return samples


def scoring_endings(tokenizer, has_eos: torch.Tensor, settings) -> list[list[int]]:
    """What follows each response when it is scored: the template's ending after an EOS; for a response cut off
    at max_new_tokens, EOS and that ending (truncated: append_eos) or nothing (its score is replaced anyway)."""
    after_eos = template_ending(tokenizer)
    cut_off = [tokenizer.eos_token_id, *after_eos] if settings.truncated == "append_eos" else []
    return [after_eos if finished else cut_off for finished in has_eos.tolist()]


def reward_scores(shared, samples: Samples, roles: list[str], settings) -> torch.Tensor:
    """The reward run's score of each sample; with two runs, Llama 2's helpfulness/safety rule picks one. A response
    cut off at max_new_tokens gets settings.truncated_score unless the recipe scores it with EOS appended."""
    batch, index = samples.scoring
    if roles == ["reward"]:
        scores = shared.scores("reward", batch, index)
    else:
        helpful, safe = (shared.scores(role, batch, index) for role in ("helpfulness", "safety"))
        scores = combine_llama2_rewards(helpful, safe, samples.safety, settings.safety_threshold)
    if settings.truncated == "fixed_score":
        scores = torch.where(samples.has_eos, scores, torch.full_like(scores, settings.truncated_score))
    return scores
