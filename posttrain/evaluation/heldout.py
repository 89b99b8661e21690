"""The held-out check at the end of `posttrain ppo` and `posttrain rs`: on prompts the run did not train on, the
trained model against the model it started from.

A rising reward during training can be the policy finding the reward model's blind spots (issue #19: every answer
cut off, garbled text, a KL of 4.5 nats). So both models answer the held-out prompts greedily, and the report gives
the win-rate of the trained model judged by the reward run (with eval winrate's bootstrap interval), fluency as the
base model's perplexity of each model's answers (eval perplexity's sliding-window NLL), the mean answer length and
the share of answers cut off at max_new_tokens. Models are loaded one at a time, as in `eval winrate`.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable

from posttrain.inference.generation import GenerationSettings, Reply

RESAMPLES = 1000
SIDES = {"trained": "a", "start": "b"}  # each model's side in judge_pairs' pairs
WINNERS = {side: role for role, side in SIDES.items()} | {"tie": "tie"}  # judge_pairs' winner, as a role


def heldout_report(
    start: str,
    trained: str,
    judge: str,
    base: str,
    prompts: list[list[dict]],
    *,
    max_new_tokens: int,
    start_chat_template: str,
    quantization: str,
    truncated_score: float | None,
    seed: int,
    echo: Callable[[str], None] = print,
) -> dict:
    """The report on `prompts` (each a chat ending in a user turn). `start` and `trained` are model names or run
    folders, `judge` a reward run, `base` the base model whose perplexity measures fluency. A cut-off answer is
    judged as the run scored one in training (`truncated_score`, or None: with its turn closed)."""
    from posttrain.evaluation.winrate import OUTCOME_VALUE, bootstrap_interval, generate_replies, judge_pairs

    settings = GenerationSettings(max_new_tokens=max_new_tokens)  # greedy: cheap and the same on every rerun
    replies = {
        "trained": generate_replies(trained, prompts, settings, seed, "auto", 8, echo),
        # a run keeps its own template; a base model the policy started from takes the recipe's
        "start": generate_replies(start, prompts, settings, seed, start_chat_template, 8, echo),
    }
    echo(f"judging {len(prompts)} held-out pairs with {judge}")
    pairs = judge_pairs(judge, prompts, replies["trained"], replies["start"], 0.0, truncated_score)
    values = [OUTCOME_VALUE[pair["winner"]] for pair in pairs]
    texts = {role: [reply.text for reply in replies[role]] for role in replies}
    nlls = answer_nlls(base, texts, quantization)
    perplexities = {role: perplexity(nlls[role]) for role in nlls}
    winners = [pair["winner"] for pair in pairs]
    answers = [
        {
            "prompt": pair["prompt"][-1]["content"],
            **{role: pair[f"reply_{side}"] for role, side in SIDES.items()},
            "winner": WINNERS[pair["winner"]],
            **{f"{role}_score": pair[f"score_{side}"] for role, side in SIDES.items()},
            **{f"{role}_perplexity": perplexity([nlls[role][index]]) for role in SIDES},
        }
        for index, pair in enumerate(pairs)
    ]
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "win_rate": statistics.fmean(values),  # of the trained model over the start, ties counting half
        "win_rate_ci95": bootstrap_interval(values, RESAMPLES, seed),
        "wins_losses_ties": [winners.count(SIDES["trained"]), winners.count(SIDES["start"]), winners.count("tie")],
        **{
            role: answer_summary(replies[role], [pair[f"score_{side}"] for pair in pairs], perplexities[role])
            for role, side in SIDES.items()
        },
        "examples": [{key: answer[key] for key in ("prompt", "start", "trained")} for answer in answers[:3]],
        "answers": answers,  # every prompt's pair; the run writes them to heldout.jsonl, not metrics.json
    }


def answer_summary(replies: list[Reply], scores: list[float], perplexity: float | None) -> dict:
    return {
        "mean_score": statistics.fmean(scores),
        "perplexity": perplexity,
        "mean_tokens": statistics.fmean(reply.tokens for reply in replies),
        "cut_off": sum(not reply.finished for reply in replies) / len(replies),
    }


def answer_nlls(base: str, texts: dict[str, list[str]], quantization: str) -> dict[str, list[tuple[float, int]]]:
    """Per set of answers, the base model's summed negative log-likelihood of each answer's text and the number of
    tokens it scored (each answer alone, no prompt or template): fluent text scores low, garbled text high."""
    import gc

    from posttrain.evaluation.perplexity import sliding_window_nll
    from posttrain.models.loading import load_run_model

    model, tokenizer = load_run_model(base, quantization=quantization)
    result = {
        role: [sliding_window_nll(model, tokenizer(text)["input_ids"], window=1024, stride=512) for text in answers]
        for role, answers in texts.items()
    }
    del model
    gc.collect()
    return result


def perplexity(nlls: list[tuple[float, int]]) -> float | None:
    """exp(NLL per token) over the answers; None with nothing to predict (every answer empty)."""
    tokens = sum(scored for _, scored in nlls)
    return math.exp(sum(nll for nll, _ in nlls) / tokens) if tokens else None


def heldout_rows(report: dict) -> list[str]:
    """The summary lines printed at the end of the run."""
    low, high = report["win_rate_ci95"]
    wins, losses, ties = report["wins_losses_ties"]
    lines = [
        f"held-out    {report['prompts']} prompts, greedy: win rate {report['win_rate']:.3f} over the start "
        f"(95% CI {low:.3f} to {high:.3f}; {wins} wins, {losses} losses, {ties} ties)",
    ]
    for role in ("start", "trained"):
        part = report[role]
        fluency = "n/a" if part["perplexity"] is None else f"{part['perplexity']:.2f}"
        lines.append(
            f"  {role:<8}  score {part['mean_score']:.3f}, base-model perplexity {fluency}, "
            f"{part['mean_tokens']:.1f} tokens, {round(part['cut_off'] * report['prompts'])} cut off"
        )
    return lines
