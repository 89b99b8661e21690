"""`posttrain eval arena`: a Chatbot-Arena leaderboard of many models, from reward-run judges and from votes.

Every model answers every prompt once. The answers are cached under --answers, one JSONL per model and generation
settings, written by `posttrain generate`'s resumable writer: a rerun after a kill continues where it stopped, and a
model whose answers are all there is not loaded again. Each judge (a reward run) scores every distinct answer once;
an answer cut off at --max-new-tokens is scored as eval winrate scores one (--truncated). Then every pair of models
meets on every prompt: identical answers tie, else the higher score wins unless the scores are within --tie-margin.
Each judge's battles, and the votes of each judge named in --votes files ("human"), make a leaderboard of their own
(bradley_terry.py). Models are loaded one at a time.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import statistics
from collections.abc import Callable
from pathlib import Path

from posttrain.errors import UserError
from posttrain.evaluation.bradley_terry import leaderboard
from posttrain.evaluation.votes import read_votes
from posttrain.evaluation.winrate import winner
from posttrain.inference.generation import GenerationSettings


def arena(
    models: list[str],
    prompts_file: str | None,
    judges: list[str],
    vote_files: list[Path],
    settings: GenerationSettings,
    *,
    answers_dir: Path,
    seed: int = 0,
    resamples: int = 1000,
    tie_margin: float = 0.0,
    truncated_score: float | None = -10.0,
    chat_template: str = "auto",
    batch_size: int = 8,
    echo: Callable[[str], None] = print,
) -> dict:
    """The report: one leaderboard per judge and per voting judge, with what they were computed from."""
    check_request(models, prompts_file, judges, vote_files, resamples)
    votes, used = read_votes(vote_files) if vote_files else ({}, [])  # a bad vote fails before any model loads
    for file in used:
        echo(votes_line(file))
    report = {"mode": "arena", "models": models, "prompts": prompts_file, "judges": judges, "votes": used}
    report["settings"] = settings.as_record() | {"seed": seed, "tie_margin": tie_margin, "chat_template": chat_template}
    report["settings"]["truncated_score"] = truncated_score
    ranked = []  # (what the board is, its battles)
    if models:
        prompts = arena_prompts(models, judges, prompts_file, settings, chat_template)
        files = {name: answers_file(answers_dir, name, settings, seed, chat_template) for name in models}
        options = {"seed": seed, "chat_template": chat_template, "batch_size": batch_size, "echo": echo}
        answers = {
            name: collect_answers(name, prompts_file, prompts, files[name], settings, **options) for name in models
        }
        report |= {"prompt_count": len(prompts), "answers": {name: str(path) for name, path in files.items()}}
        report["unfinished"] = {name: sum(not a["finished"] for a in rows) for name, rows in answers.items()}
        report["scores"] = {
            judge: judge_answers(judge, prompts, answers, batch_size, truncated_score, echo) for judge in judges
        }
        for judge, scores in report["scores"].items():
            battles = judged_battles(models, answers, scores, tie_margin)
            mean_score = {name: statistics.fmean(values) for name, values in scores.items()}
            ranked.append(({"judge": judge, "kind": "reward run", "mean_score": mean_score}, battles))
    ranked += [({"judge": judge, "kind": "votes"}, battles) for judge, battles in votes.items()]
    boards = [board | leaderboard(battles, resamples, seed) for board, battles in ranked]
    return report | {"leaderboards": boards}


def votes_line(file: dict) -> str:
    """What a votes file gave: votes used, and what was not (cut short, repeated), and by whom."""
    skipped = f"; lines cut short by a crash, skipped: {file['unreadable']}" if file["unreadable"] else ""
    repeated = f"; repeated votes of a round, dropped: {file['duplicates']}" if file["duplicates"] else ""
    voters = ", ".join(f"{name} {count}" for name, count in sorted(file["voters"].items()))
    old = f"; {file['without_id']} written before votes had ids" if file["without_id"] else ""
    return (
        f"{file['file']}: {file['rows']} votes used ({file['both_bad']} both bad, counted as ties{skipped}{repeated})"
        f", by voter: {voters or 'none'}{old}"
    )


def check_request(models, prompts_file, judges, vote_files, resamples: int) -> None:
    """Models need prompts and a judge; votes alone make a leaderboard too."""
    if resamples < 1:
        raise UserError("--bootstrap must be at least 1.")
    if not models and not vote_files:
        raise UserError("Name two or more MODELs with --prompts and --judge, or give --votes FILE (or both).")
    if not models and (judges or prompts_file):
        raise UserError("--judge and --prompts judge the answers of MODELs: name two or more models.")
    if not models:
        return
    if len(models) < 2:
        raise UserError(f"An arena needs two or more models; got only {models[0]}.")
    repeated = sorted({name for name in models if models.count(name) > 1})
    if repeated:
        raise UserError(f"{', '.join(repeated)} named twice; name each model once.")
    if not prompts_file or not judges:
        raise UserError("MODELs are judged on --prompts FILE by --judge REWARD_RUN (repeatable): give both.")
    if len(set(judges)) < len(judges):
        raise UserError("A --judge is named twice; name each reward run once.")


def arena_prompts(models, judges, prompts_file: str, settings: GenerationSettings, chat_template: str) -> list:
    """The prompts (message lists), after every check that needs no weights: judges are reward runs with the
    models' tokenizer, and every prompt leaves room for a reply in every model's context."""
    from posttrain.data.prompts import load_prompts
    from posttrain.evaluation.winrate import check_same_tokenizer
    from posttrain.inference.generation import room_for_replies
    from posttrain.models.loading import context_length, load_inference_tokenizer, require_reward_run

    judge_tokenizers = {}
    for judge in judges:
        require_reward_run(judge, "--judge")
        judge_tokenizers[judge] = load_inference_tokenizer(judge, task_type="SEQ_CLS")[1]
    limits = []
    for name in models:
        ref, tokenizer = load_inference_tokenizer(name, chat_template)
        for judge, judge_tokenizer in judge_tokenizers.items():
            check_same_tokenizer(judge_tokenizer, judge, tokenizer, name)
        limits.append(context_length(ref) - settings.max_new_tokens)
    rows = load_prompts(prompts_file, tokenizer, min(limits), *room_for_replies(min(limits), settings))
    return [row["prompt"] for row in rows]


def answers_file(folder: Path, name: str, settings: GenerationSettings, seed: int, chat_template: str) -> Path:
    """FOLDER/NAME-HASH.jsonl: the name made safe for a file system, the hash of everything that shapes the answers
    (the model as named and the timestamps of its weights, the generation settings, the seed when sampling, the chat
    template), so that changed settings, or a run trained again in place, never reuse old answers."""
    from posttrain.models.loading import resolve_model

    identity = {
        "model": name,
        "weights": weights_stamp(resolve_model(name)),
        "settings": settings.as_record(),
        "seed": seed if settings.do_sample else None,
        "chat_template": chat_template,
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:10]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.")[-60:].lstrip("-.") or "model"
    return folder / f"{safe}-{digest}.jsonl"


def weights_stamp(ref) -> list:
    """Size and modification time of a local model's weight files (a run's adapter); nothing for a hub id."""
    folder = ref.adapter if ref.is_run else Path(ref.base)
    if not folder.is_dir():
        return []
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    return [[file.name, file.stat().st_size, file.stat().st_mtime_ns] for file in files]


def collect_answers(
    name, prompts_file, prompts, path: Path, settings, *, seed, chat_template, batch_size, echo
) -> list:
    """[{text, finished}] of model `name`, one per prompt in order: generated where `path` lacks them."""
    from posttrain.inference.generate import generate_file, prompt_key

    options = {"batch_size": batch_size, "seed": seed, "chat_template": chat_template, "echo": echo}
    written = generate_file(name, prompts_file, path, settings, **options)
    release_memory()
    done = f"{written} of {len(prompts)} answers generated" if written else "all answers cached"
    echo(f"{name}: {done} in {path}")
    rows: dict[str, list[dict]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():  # checked by generate_file
        row = json.loads(line)
        # rows of `posttrain generate` before `finished` existed count as finished
        rows.setdefault(prompt_key(row["prompt"]), []).append(
            {"text": row["response"], "finished": row.get("finished", True)}
        )
    return [rows[prompt_key(prompt)].pop(0) for prompt in prompts]


def judge_answers(
    judge: str, prompts: list, answers: dict[str, list[dict]], batch_size: int, truncated_score: float | None, echo
) -> dict:
    """{model: [score of its answer to each prompt]}: the judge scores each distinct (prompt, answer) once; a cut-off
    answer scores `truncated_score` instead (None: the judge's score of it with its turn closed)."""
    from posttrain.evaluation.scoring import score_conversations
    from posttrain.inference.generate import prompt_key
    from posttrain.models.loading import load_run_model

    chats: dict[tuple[str, str], list[dict]] = {}
    for rows in answers.values():
        for prompt, answer in zip(prompts, rows, strict=True):
            chat = [*prompt, {"role": "assistant", "content": answer["text"]}]
            chats.setdefault((prompt_key(prompt), answer["text"]), chat)
    echo(f"{judge}: scoring {len(chats)} distinct answers")
    model, tokenizer = load_run_model(judge, task_type="SEQ_CLS")
    score_of = dict(zip(chats, score_conversations(model, tokenizer, list(chats.values()), batch_size), strict=True))
    del model
    release_memory()

    def score(prompt, answer) -> float:
        if truncated_score is not None and not answer["finished"]:
            return truncated_score
        return score_of[(prompt_key(prompt), answer["text"])]

    return {
        name: [score(prompt, answer) for prompt, answer in zip(prompts, rows, strict=True)]
        for name, rows in answers.items()
    }


def judged_battles(models: list[str], answers: dict, scores: dict, tie_margin: float) -> list[tuple[str, str, str]]:
    """(model_a, model_b, "a" | "b" | "tie") for every pair of models on every prompt."""
    battles = []
    for a, b in itertools.combinations(models, 2):
        for answer_a, answer_b, score_a, score_b in zip(answers[a], answers[b], scores[a], scores[b], strict=True):
            battles.append((a, b, winner(answer_a["text"], answer_b["text"], score_a, score_b, tie_margin)))
    return battles


def release_memory() -> None:
    """Free the model just used before the next one loads."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def leaderboard_lines(board: dict) -> list[str]:
    """A leaderboard as a terminal table, highest score first."""
    header = ["#", "model", "score", "95% CI", "battles", "won", "lost", "tied"]
    rows = [
        [str(rank), m["model"], f"{m['score']:.1f}", f"{m['ci95'][0]:.1f} to {m['ci95'][1]:.1f}"]
        + [str(m[key]) for key in ("battles", "wins", "losses", "ties")]
        for rank, m in enumerate(board["models"], start=1)
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]

    def line(cells: list[str]) -> str:  # model names left-aligned, numbers right-aligned
        return "  ".join(
            c.ljust(w) if n == 1 else c.rjust(w) for n, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "-" * len(line(header))
    lines = [f"judge {board['judge']} ({board['kind']}): {board['battles']} battles", rule, line(header), rule]
    lines += [*map(line, rows), rule]
    if not board["well_posed"]:
        lines.append("note: a model (or group) never lost or never won against the rest: its score is unbounded.")
    return lines
