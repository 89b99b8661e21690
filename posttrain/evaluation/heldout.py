"""The held-out check at the end of `posttrain ppo` and `posttrain rs`: on prompts the run did not train on, the
trained model against the model it started from.

A rising reward during training can be the policy finding the reward model's blind spots (issue #19: every answer
cut off, garbled text, a KL of 4.5 nats). So both models answer the held-out prompts greedily, and the report gives
the win-rate of the trained model judged by the reward run (with eval winrate's bootstrap interval) and, when the
recipe names one, by a second reward run that the policy never optimised (Gao et al. 2022's check for
over-optimisation); fluency as the base model's perplexity of each model's answers (eval perplexity's sliding-window
NLL) beside that of the SFT data's own answers (posttrain.evaluation.taught_text); the share of answers that loop
(posttrain.evaluation.loops), the mean answer length and the share cut off at max_new_tokens. The bars these meet or
miss are in posttrain.evaluation.heldout_bars. Models are loaded one at a time, as in `eval winrate`. Under several
processes each one answers, judges and scores its share of the prompts and the results are gathered (`share`), so
that the report is the one a single process gives and no process waits for another.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import TypeAlias

from posttrain.evaluation.heldout_bars import heldout_bars
from posttrain.evaluation.loops import has_loop
from posttrain.evaluation.taught_text import TaughtText
from posttrain.inference.generation import GenerationSettings, Reply

RESAMPLES = 1000
# Prompts generated, and pairs scored (score_conversations' batch), together. A process's share of the prompts is
# whole batches of this size, the batches one process forms, so that each prompt's answers and scores are bit for bit
# those of one process (a batch is left-padded to its longest prompt). Generation is greedy: no seed decides them.
BATCH = 8
SIDES = {"trained": "a", "start": "b"}  # each model's side in judge_pairs' pairs
WINNERS = {side: role for role, side in SIDES.items()} | {"tie": "tie"}  # judge_pairs' winner, as a role

# share(items, batch_size, work): work's results, one per item, in order (posttrain.launch.share_items, bound to the
# processes, splits the items among them)
Share: TypeAlias = Callable[[list, int, Callable[[list], list]], list]


def in_this_process(items: list, batch_size: int, work: Callable[[list], list]) -> list:
    """All the work here: one process."""
    return work(items)


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
    second_judge: str | None = None,
    taught: TaughtText | None = None,
    echo: Callable[[str], None] = print,
    share: Share = in_this_process,
) -> dict:
    """The report on `prompts` (each a chat ending in a user turn). `start` and `trained` are model names or run
    folders, `judge` the reward run the policy optimised and `second_judge` another one (or None), `base` the base
    model whose perplexity measures fluency, `taught` the SFT data's answers scored beside the held-out ones. A
    cut-off answer is judged as the run scored one in training (`truncated_score`, or None: with its turn closed).
    `share` splits the per-prompt and per-answer work among processes (posttrain.launch.share_items) and gathers
    it; every process gets the same report."""
    from posttrain.evaluation.winrate import generate_replies, judge_pairs

    settings = GenerationSettings(max_new_tokens=max_new_tokens)  # greedy: cheap and the same on every rerun
    judges = {name: run for name, run in (("reward", judge), ("judge", second_judge)) if run}

    def answer_and_judge(chunk: list[list[dict]]) -> list[dict]:
        replies = {
            "trained": generate_replies(trained, chunk, settings, seed, "auto", BATCH, echo),
            # a run keeps its own template; a base model the policy started from takes the recipe's
            "start": generate_replies(start, chunk, settings, seed, start_chat_template, BATCH, echo),
        }
        judged = {}
        for name, run in judges.items():
            echo(f"judging {len(chunk)} held-out pairs with {run}")
            judged[name] = judge_pairs(run, chunk, replies["trained"], replies["start"], 0.0, truncated_score)
        return [  # per prompt: both replies and each judge's pair
            {"replies": {role: replies[role][i] for role in SIDES}, "judged": {n: judged[n][i] for n in judged}}
            for i in range(len(chunk))
        ]

    per_prompt = share(prompts, BATCH, answer_and_judge)
    replies = {role: [row["replies"][role] for row in per_prompt] for role in SIDES}
    judged = {name: [row["judged"][name] for row in per_prompt] for name in judges}
    texts = {role: [reply.text for reply in replies[role]] for role in replies}
    nlls = answer_nlls(base, texts | ({"taught": taught.answers} if taught else {}), quantization, share)
    answers = answer_rows(judged, nlls)
    report = {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        **outcome(judged["reward"], seed),  # of the trained model over the start, judged by the optimised reward run
        "judge": {"run": second_judge, **outcome(judged["judge"], seed)} if second_judge else None,
        **{
            role: answer_summary(replies[role], [row[f"{role}_score"] for row in answers], perplexity(nlls[role]))
            for role in SIDES
        },
        "taught": None,
        "examples": [{key: answer[key] for key in ("prompt", "start", "trained")} for answer in answers[:3]],
        "answers": answers,  # every prompt's pair; the run writes them to heldout.jsonl, not metrics.json
    }
    if taught:
        report["taught"] = {"source": taught.source, "answers": len(taught.answers), "total": taught.total}
        report["taught"]["perplexity"] = perplexity(nlls["taught"])
    report["bars"] = heldout_bars(report)
    return report


def outcome(pairs: list[dict], seed: int) -> dict:
    """The win rate of the trained model (ties counting half), its bootstrap interval, and the counts."""
    from posttrain.evaluation.winrate import OUTCOME_VALUE, bootstrap_interval

    values = [OUTCOME_VALUE[pair["winner"]] for pair in pairs]
    winners = [pair["winner"] for pair in pairs]
    return {
        "win_rate": statistics.fmean(values),
        "win_rate_ci95": bootstrap_interval(values, RESAMPLES, seed),
        "wins_losses_ties": [winners.count(SIDES["trained"]), winners.count(SIDES["start"]), winners.count("tie")],
    }


def answer_rows(judged: dict[str, list[dict]], nlls: dict[str, list[tuple[float, int]]]) -> list[dict]:
    """One row per prompt: both answers, the winner and scores under each judge, perplexities, loop and cut-off."""
    rows = []
    for index, pair in enumerate(judged["reward"]):
        row = {
            "prompt": pair["prompt"][-1]["content"],
            **{role: pair[f"reply_{side}"] for role, side in SIDES.items()},
            "winner": WINNERS[pair["winner"]],
            **{f"{role}_score": pair[f"score_{side}"] for role, side in SIDES.items()},
            **{f"{role}_perplexity": perplexity([nlls[role][index]]) for role in SIDES},
            **{f"{role}_loop": has_loop(pair[f"reply_{side}"]) for role, side in SIDES.items()},
            **{f"{role}_cut_off": not pair[f"finished_{side}"] for role, side in SIDES.items()},
        }
        if "judge" in judged:
            second = judged["judge"][index]
            row["judge_winner"] = WINNERS[second["winner"]]
            row |= {f"{role}_judge_score": second[f"score_{side}"] for role, side in SIDES.items()}
        rows.append(row)
    return rows


def answer_summary(replies: list[Reply], scores: list[float], perplexity: float | None) -> dict:
    return {
        "mean_score": statistics.fmean(scores),
        "perplexity": perplexity,
        "mean_tokens": statistics.fmean(reply.tokens for reply in replies),
        "cut_off": sum(not reply.finished for reply in replies) / len(replies),
        "loops": sum(has_loop(reply.text) for reply in replies) / len(replies),
    }


def answer_nlls(
    base: str, texts: dict[str, list[str]], quantization: str, share: Share = in_this_process
) -> dict[str, list[tuple[float, int]]]:
    """Per set of answers, the base model's summed negative log-likelihood of each answer's text and the number of
    tokens it scored (each answer alone, no prompt or template): fluent text scores low, garbled text high."""
    import gc

    from posttrain.evaluation.perplexity import sliding_window_nll
    from posttrain.models.loading import load_run_model

    def score(chunk: list[str]) -> list[tuple[float, int]]:
        model, tokenizer = load_run_model(base, quantization=quantization)
        scored = [sliding_window_nll(model, tokenizer(text)["input_ids"], window=1024, stride=512) for text in chunk]
        del model
        gc.collect()
        return scored

    every = [text for answers in texts.values() for text in answers]
    scored = iter(share(every, 1, score))  # each text alone: any split scores it alike
    return {role: [next(scored) for _ in answers] for role, answers in texts.items()}


def perplexity(nlls: list[tuple[float, int]]) -> float | None:
    """exp(NLL per token) over the answers; None with nothing to predict (every answer empty)."""
    tokens = sum(scored for _, scored in nlls)
    return math.exp(sum(nll for nll, _ in nlls) / tokens) if tokens else None
