"""A reward run's score of whole conversations, and how often it ranks pairs the right way round: what reward
training, `posttrain eval accuracy` and `eval winrate` share."""

from __future__ import annotations

from collections import defaultdict


def accuracy_report(examples: list[dict], chosen: list[float], rejected: list[float]) -> dict:
    """Share of pairs scored the right way round, overall and per preference-strength label."""
    right = [c > r for c, r in zip(chosen, rejected, strict=True)]
    report = {"accuracy": sum(right) / len(right), "pairs": len(right)}
    by_label = defaultdict(list)
    for example, ok in zip(examples, right, strict=True):
        if "strength" in example:
            by_label[example["strength"]].append(ok)
    if by_label:
        report["by_strength"] = {
            label: {"accuracy": sum(oks) / len(oks), "pairs": len(oks)} for label, oks in by_label.items()
        }
    return report


def score_conversations(model, tokenizer, conversations: list[list[dict]], batch_size: int = 8) -> list[float]:
    """The reward model's scalar score of each conversation, rendered with the chat template as in training."""
    import torch

    was_training = model.training
    model.eval()
    scores: list[float] = []
    try:
        for start in range(0, len(conversations), batch_size):
            texts = [
                tokenizer.apply_chat_template(c, tokenize=False) for c in conversations[start : start + batch_size]
            ]
            batch = tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt").to(model.device)
            with torch.no_grad():
                scores += model(**batch).logits[:, 0].float().tolist()
    finally:
        model.train(was_training)
    return scores
