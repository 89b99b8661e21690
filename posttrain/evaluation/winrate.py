"""`posttrain eval winrate`: how often model A's reply beats model B's, judged by a reward run.

Chatbot-Arena style, pairwise per prompt: A wins, B wins, or a tie (identical replies, or scores within
--tie-margin), a tie counting half. A reply cut off at --max-new-tokens is scored as ppo and rs score one: a fixed
low score (--truncated fixed_score, the default: the reward model never saw a mid-sentence ending in training, so
its score there means nothing), or the judge's score of the reply with its turn closed (append_eos). The 95%
interval comes from a seeded bootstrap over prompts. The models are loaded one after another, then the judge, so
only one is in memory at a time.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable

from posttrain.errors import UserError
from posttrain.inference.generation import GenerationSettings, Reply

OUTCOME_VALUE = {"a": 1.0, "tie": 0.5, "b": 0.0}


def win_rate(
    model_a: str,
    model_b: str,
    prompts_file: str,
    judge: str,
    settings: GenerationSettings,
    *,
    seed: int = 0,
    resamples: int = 1000,
    tie_margin: float = 0.0,
    truncated_score: float | None = -10.0,
    chat_template: str = "auto",
    batch_size: int = 8,
    echo: Callable[[str], None] = print,
) -> dict:
    """The report: counts, win rate of A with its bootstrap interval, mean scores, and every judged pair.
    `truncated_score` None scores a cut-off reply with its turn closed (append_eos)."""
    from posttrain.data.prompts import load_prompts
    from posttrain.inference.generation import room_for_replies
    from posttrain.models.loading import context_length, load_inference_tokenizer, require_reward_run

    require_reward_run(judge, "--judge")
    _, judge_tokenizer = load_inference_tokenizer(judge, task_type="SEQ_CLS")
    tokenizers, limits = {}, []
    for name in (model_a, model_b):  # every check before the first model loads
        ref, tokenizers[name] = load_inference_tokenizer(name, chat_template)
        check_same_tokenizer(judge_tokenizer, judge, tokenizers[name], name)
        limits.append(context_length(ref) - settings.max_new_tokens)
    rows = load_prompts(prompts_file, tokenizers[model_a], min(limits), *room_for_replies(min(limits), settings))
    prompts = [row["prompt"] for row in rows]
    replies = [
        # B samples with the next seed, so a model set against itself gives two independent replies
        generate_replies(name, prompts, settings, seed + offset, chat_template, batch_size, echo)
        for offset, name in enumerate((model_a, model_b))
    ]
    echo(f"judging {len(prompts)} pairs with {judge}")
    pairs = judge_pairs(judge, prompts, *replies, tie_margin, truncated_score)
    values = [OUTCOME_VALUE[pair["winner"]] for pair in pairs]
    winners = [pair["winner"] for pair in pairs]
    return {
        "mode": "winrate",
        "model_a": model_a,
        "model_b": model_b,
        "judge": judge,
        "prompts": prompts_file,
        "settings": settings.as_record() | {"seed": seed, "tie_margin": tie_margin, "truncated_score": truncated_score},
        "pairs": len(pairs),
        "wins_a": winners.count("a"),
        "wins_b": winners.count("b"),
        "ties": winners.count("tie"),
        "win_rate_a": statistics.fmean(values),
        "ci95": bootstrap_interval(values, resamples, seed),
        "bootstrap_resamples": resamples,
        "mean_score_a": statistics.fmean(pair["score_a"] for pair in pairs),
        "mean_score_b": statistics.fmean(pair["score_b"] for pair in pairs),
        "cut_off_a": sum(not pair["finished_a"] for pair in pairs),
        "cut_off_b": sum(not pair["finished_b"] for pair in pairs),
        "judged": pairs,
    }


def judge_pairs(
    judge: str,
    prompts: list,
    replies_a: list[Reply],
    replies_b: list[Reply],
    tie_margin: float,
    truncated_score: float | None = -10.0,
) -> list:
    """Each prompt with both replies, their reward scores, and the winner ("a", "b" or "tie"). A reply cut off at
    max_new_tokens scores `truncated_score`; with None, the judge scores it with its turn closed."""
    from posttrain.evaluation.scoring import score_conversations
    from posttrain.models.loading import load_run_model

    model, tokenizer = load_run_model(judge, task_type="SEQ_CLS")

    def scores(replies: list[Reply]) -> list[float]:
        chats = [p + [{"role": "assistant", "content": r.text}] for p, r in zip(prompts, replies, strict=True)]
        judged = score_conversations(model, tokenizer, chats)
        if truncated_score is None:
            return judged
        return [score if reply.finished else truncated_score for score, reply in zip(judged, replies, strict=True)]

    return [
        {
            "prompt": p,
            "reply_a": ra.text,
            "reply_b": rb.text,
            "finished_a": ra.finished,
            "finished_b": rb.finished,
            "score_a": sa,
            "score_b": sb,
            "winner": winner(ra.text, rb.text, sa, sb, tie_margin),
        }
        for p, ra, rb, sa, sb in zip(prompts, replies_a, replies_b, scores(replies_a), scores(replies_b), strict=True)
    ]


def check_same_tokenizer(judge_tokenizer, judge: str, tokenizer, model: str) -> None:
    """A reward model judges replies of its own tokenizer family only."""
    if judge_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise UserError(
            f"--judge {judge} was trained on a base with another tokenizer than {model} ({len(judge_tokenizer)} vs "
            f"{len(tokenizer)} tokens), so its scores say nothing reliable about that model's replies. Judge with a "
            f"reward run trained on {model}'s base model, or on one that shares its tokenizer."
        )


def generate_replies(name, prompts, settings, seed, chat_template, batch_size, echo, as_text=False) -> list[Reply]:
    """Greedy or sampled replies of one model (text, tokens, whether it ended), which is released again before the
    next one loads. `as_text`: the prompts are plain texts the model continues, with no chat template."""
    import gc

    import torch
    from transformers import set_seed

    from posttrain.inference.generation import continue_texts, generate_replies_to_chats, progress_bar
    from posttrain.models.loading import load_run_model

    echo(f"generating {len(prompts)} replies with {name}")
    model, tokenizer = load_run_model(name, chat_template=chat_template)
    set_seed(seed)
    reply = continue_texts if as_text else generate_replies_to_chats
    replies: list[Reply] = []
    with progress_bar(len(prompts)) as bar:
        for start in range(0, len(prompts), batch_size):
            replies += reply(model, tokenizer, prompts[start : start + batch_size], settings)
            bar.update(min(batch_size, len(prompts) - start))
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return replies


def winner(reply_a: str, reply_b: str, score_a: float, score_b: float, tie_margin: float) -> str:
    if reply_a == reply_b or abs(score_a - score_b) <= tie_margin:
        return "tie"
    return "a" if score_a > score_b else "b"


def bootstrap_interval(values: list[float], resamples: int, seed: int, level: float = 0.95) -> list[float]:
    """Percentile bootstrap of the mean: resample the prompts with replacement, `resamples` times."""
    if resamples < 1:
        raise UserError("--bootstrap must be at least 1.")
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - level) / 2
    return [means[int(tail * (resamples - 1))], means[round((1 - tail) * (resamples - 1))]]


def winrate_rows(report: dict) -> list[tuple[str, str]]:
    low, high = report["ci95"]
    return [
        ("A", report["model_a"]),
        ("B", report["model_b"]),
        ("judge", report["judge"]),
        ("pairs", f"{report['pairs']} ({report['prompts']})"),
        ("A wins / B wins / ties", f"{report['wins_a']} / {report['wins_b']} / {report['ties']}"),
        ("win rate of A", f"{report['win_rate_a']:.3f}  (95% CI {low:.3f} to {high:.3f}, ties count half)"),
        ("mean score", f"A {report['mean_score_a']:.3f}, B {report['mean_score_b']:.3f}"),
        ("cut off", f"A {report['cut_off_a']}, B {report['cut_off_b']} of {report['pairs']} (at max_new_tokens)"),
    ]
