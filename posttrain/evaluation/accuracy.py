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
    lengths = {side: [answer_tokens(tokenizer, e[side]) for e in examples] for side in ("chosen", "rejected")}
    return {
        "mode": "accuracy",
        "reward_run": str(ref.adapter.parent),
        "data": data,
        "format": fmt,
        "identical_pairs_dropped": identical,
        **accuracy_report(examples, chosen, rejected),
        "mean_score_chosen": statistics.fmean(chosen),
        "mean_score_rejected": statistics.fmean(rejected),
        "length_bias": length_bias(lengths["chosen"], lengths["rejected"], chosen, rejected),
    }


def answer_tokens(tokenizer, answer: list[dict]) -> int:
    """Tokens of an answer's text (its assistant turns), without the template around them."""
    return sum(len(tokenizer(turn["content"], add_special_tokens=False)["input_ids"]) for turn in answer)


def length_bias(chosen_lengths, rejected_lengths, chosen_scores, rejected_scores) -> dict:
    """How much the data and the reward model favour longer answers: the Pearson correlation of score and length over
    every scored answer, the mean length difference (chosen - rejected, tokens), and among pairs of unequal length the
    share whose longer answer the data chose and the share whose longer answer the model scored higher. A model
    that learned "longer is better" shows a high correlation and a model share above the data's."""
    lengths, scores = [*chosen_lengths, *rejected_lengths], [*chosen_scores, *rejected_scores]
    try:
        correlation = statistics.correlation(lengths, scores)
    except statistics.StatisticsError:  # every answer the same length, or every score equal
        correlation = None
    pairs = list(zip(chosen_lengths, rejected_lengths, chosen_scores, rejected_scores, strict=True))
    unequal = [(lc, lr, sc, sr) for lc, lr, sc, sr in pairs if lc != lr]
    by_data = [lc > lr for lc, lr, _, _ in unequal]
    by_model = [(sc > sr) == (lc > lr) for lc, lr, sc, sr in unequal]
    return {
        "score_length_correlation": correlation,
        "mean_length_difference": statistics.fmean(lc - lr for lc, lr, _, _ in pairs),
        "pairs_of_unequal_length": len(unequal),
        "longer_preferred_by_data": sum(by_data) / len(unequal) if unequal else None,
        "longer_preferred_by_model": sum(by_model) / len(unequal) if unequal else None,
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
    bias = report["length_bias"]
    correlation = bias["score_length_correlation"]
    rows.append(("score vs length", "undefined" if correlation is None else f"Pearson r {correlation:.3f}"))
    if bias["pairs_of_unequal_length"]:
        rows.append(
            (
                "longer preferred",
                f"data {bias['longer_preferred_by_data']:.3f}, model {bias['longer_preferred_by_model']:.3f} "
                f"({bias['pairs_of_unequal_length']} pairs of unequal length; chosen - rejected "
                f"{bias['mean_length_difference']:+.1f} tokens on average)",
            )
        )
    if report["identical_pairs_dropped"]:
        rows.append(("dropped", f"{report['identical_pairs_dropped']} pairs with chosen identical to rejected"))
    return rows
