"""`posttrain eval accuracy`: how often a reward run scores the chosen reply of a preference pair above the rejected.

Pairs are read in any preference format and rendered with the reward run's own chat template, as in training.
"""

from __future__ import annotations

import statistics

from posttrain.errors import UserError


def reward_accuracy(reward_run: str, data: str, data_format: str = "auto", batch_size: int = 8) -> dict:
    """The report: accuracy overall (and per preference-strength label), with the mean scores of both sides."""
    from posttrain.data.prepare import drop_identical_pairs, load_examples, measure
    from posttrain.evaluation.scoring import accuracy_report, score_conversations
    from posttrain.models.loading import context_length, load_run_model, load_tokenizer, require_reward_run

    ref = require_reward_run(reward_run, "REWARD_RUN")
    tokenizer = load_tokenizer(ref, "model")
    fmt, rows, examples = load_examples(data, data_format, preference=True)
    rows, examples, identical = drop_identical_pairs(rows, examples, "drop", data)
    limit = context_length(ref)
    for row, length in zip(rows, measure(tokenizer, rows, examples), strict=True):
        if length > limit:
            raise UserError(f"{row.where}: {length} tokens, more than the reward model's context of {limit}.")
    model, tokenizer = load_run_model(reward_run, task_type="SEQ_CLS")
    chosen = score_conversations(model, tokenizer, [e["prompt"] + e["chosen"] for e in examples], batch_size)
    rejected = score_conversations(model, tokenizer, [e["prompt"] + e["rejected"] for e in examples], batch_size)
    return {
        "mode": "accuracy",
        "reward_run": str(ref.adapter.parent),
        "data": data,
        "format": fmt,
        "identical_pairs_dropped": identical,
        **accuracy_report(examples, chosen, rejected),
        "mean_score_chosen": statistics.fmean(chosen),
        "mean_score_rejected": statistics.fmean(rejected),
    }


def accuracy_rows(report: dict) -> list[tuple[str, str]]:
    rows = [
        ("reward run", report["reward_run"]),
        ("data", f"{report['data']} ({report['format']}, {report['pairs']} pairs)"),
        ("accuracy", f"{report['accuracy']:.3f}"),
        ("mean score", f"chosen {report['mean_score_chosen']:.3f}, rejected {report['mean_score_rejected']:.3f}"),
    ]
    for label, part in (report.get("by_strength") or {}).items():
        rows.append((f"  {label}", f"{part['accuracy']:.3f} ({part['pairs']} pairs)"))
    if report["identical_pairs_dropped"]:
        rows.append(("dropped", f"{report['identical_pairs_dropped']} pairs with chosen identical to rejected"))
    return rows
