"""Reward modelling (Llama 2 / InstructGPT step 2): TRL's RewardTrainer on binary comparisons.

A one-output score head on the 4-bit base, with LoRA; the head trains in full and is saved with the adapter.
The loss is TRL's, -log sigmoid(r_chosen - r_rejected - margin), with margins from a margin column or from
Llama 2 preference-strength labels (`reward.margins`). metrics.json reports accuracy on the eval pairs.
"""

from __future__ import annotations

from collections import defaultdict

from posttrain.data.prepare import PreparedData
from posttrain.methods.common import COMMON_TRAIN_DEFAULTS, Stage, prepare_method, trl_config, trl_trainer
from posttrain.recipe import Recipe

TRAIN_DEFAULTS = COMMON_TRAIN_DEFAULTS | {"learning_rate": 1.0e-4}


def prepare(recipe: Recipe) -> tuple[Stage, PreparedData]:
    return prepare_method(recipe, TRAIN_DEFAULTS, preference=True, margins=recipe.reward.margin_table())


def build_trainer(stage: Stage, data: PreparedData):
    from trl import RewardConfig, RewardTrainer

    return trl_trainer(RewardTrainer, trl_config(RewardConfig, stage), stage, data, task_type="SEQ_CLS")


def extra_metrics(trainer, stage: Stage, data: PreparedData) -> dict:
    if not data.eval:
        return {}
    chosen = score_conversations(trainer.model, stage.tokenizer, [e["prompt"] + e["chosen"] for e in data.eval])
    rejected = score_conversations(trainer.model, stage.tokenizer, [e["prompt"] + e["rejected"] for e in data.eval])
    return {"reward_accuracy": accuracy_report(data.eval, chosen, rejected)}


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
