"""How much of each batch is padding: estimated from the rows before training, measured while training.

A padded batch is as long as its longest row, so with long-tailed data most of the compute of a short row is spent
on pad tokens. Padding-free batches (TRL's `padding_free`: the rows of a batch laid end to end in one row, with
position ids restarting at each row) have none.
"""

from __future__ import annotations

import random


def padded_fraction(lengths: list[int], batch_size: int, seed: int = 42) -> float:
    """The share of token slots holding padding when rows are batched in a random order and padded to the longest."""
    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    slots = real = 0
    for start in range(0, len(order), batch_size):
        batch = [lengths[i] for i in order[start : start + batch_size]]
        slots += max(batch) * len(batch)
        real += sum(batch)
    return 1 - real / slots if slots else 0.0


class PaddingMeter:
    """Wraps a trainer's collator and counts the token slots of its training batches and how many are real tokens.

    A batch counts while the model is in training mode, so evaluation batches are left out.
    """

    def __init__(self, collate, trainer):
        self.collate, self.trainer = collate, trainer
        self.real = self.slots = 0

    def __call__(self, features):
        batch = self.collate(features)
        if self.trainer.model.training and isinstance(batch, dict):  # GRPO collates prompts, tokenised later
            masks = [value for key, value in batch.items() if key.endswith("attention_mask")]
            if masks:
                self.real += sum(int(mask.sum()) for mask in masks)
                self.slots += sum(mask.numel() for mask in masks)
            else:  # padding-free: one row, every position a real token
                self.real += batch["input_ids"].numel()
                self.slots += batch["input_ids"].numel()
        return batch

    def metrics(self) -> dict:
        fraction = 1 - self.real / self.slots if self.slots else 0.0
        return {"padding_fraction": round(fraction, 4), "real_tokens": self.real, "token_slots": self.slots}
