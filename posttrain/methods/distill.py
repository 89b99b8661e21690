"""`posttrain distill`: safety context distillation (Llama 2, section 4.2.4).

Each prompt is answered twice by the current model: as it is, and behind a safety preprompt (a generic one, or the
one of the row's risk category, which carries an answer template). The safety reward run scores both answers as
replies to the prompt WITHOUT the preprompt. The preprompted answer is kept where it scores higher (distill.keep:
higher; all: always), and SFT then trains prompt (no preprompt) -> kept answer, so that the model answers that way
without being told to.

Run folder: distill/selected.jsonl (both answers and scores, kept or not; --resume keeps it), then what SFT writes.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

from posttrain.data.formats import RowError
from posttrain.data.prepare import chat_length
from posttrain.data.prompts import problem_report, prompt_of
from posttrain.data.safety_preprompts import BY_CATEGORY, GENERIC
from posttrain.data.sources import read_rows
from posttrain.errors import UserError
from posttrain.methods.common import Stage
from posttrain.methods.sft import TRAIN_DEFAULTS as SFT_TRAIN_DEFAULTS
from posttrain.recipe import Recipe
from posttrain.rl.context_distillation import Sampler, build_once, fine_tune, prepare_generation_stage

BUILT = "distill/selected.jsonl"

TRAIN_DEFAULTS = SFT_TRAIN_DEFAULTS | {"assistant_only_loss": True}  # SFT on the kept answers, loss on the replies


def risk_category(row: dict) -> str | None:
    """A row's risk category (risk_category, or category other than the plain "safety" tag)."""
    category = row.get("risk_category") or row.get("category")
    return category if isinstance(category, str) and category != "safety" else None


def preprompt_for(category: str | None, s) -> str:
    if s.by_category and category:
        own = BY_CATEGORY | s.preprompts
        if category in own:
            return own[category]
    return s.preprompt or GENERIC


def with_preprompt(prompt: list[dict], preprompt: str) -> list[dict]:
    """The prompt behind the preprompt: as the system message, before any system message of its own."""
    if prompt[0]["role"] == "system":
        return [{"role": "system", "content": f"{preprompt}\n\n{prompt[0]['content']}"}, *prompt[1:]]
    return [{"role": "system", "content": preprompt}, *prompt]


def read_safety_prompts(recipe: Recipe, tokenizer) -> tuple[list[dict], int]:
    """Every row's prompt, risk category and preprompt; rows whose preprompted prompt leaves no room for
    distill.max_new_tokens within data.max_length are dropped (counted) or refused (data.on_too_long: error)."""
    s, limit = recipe.distill, recipe.data.max_length - recipe.distill.max_new_tokens
    rows, prompts, problems, too_long = read_rows(recipe.data.train), [], [], []
    for row in rows:
        try:
            prompt = prompt_of(row)
        except RowError as err:
            problems.append(f"{row.where}: {err}")
            continue
        category = risk_category(row.data)
        preprompt = preprompt_for(category, s)
        if chat_length(tokenizer, with_preprompt(prompt, preprompt), add_generation_prompt=True) > limit:
            too_long.append(row.where)
            continue
        prompts.append({"prompt": prompt, "risk_category": category, "preprompt": preprompt})
    if problems:
        raise UserError(problem_report(recipe.data.train, len(rows), problems, usable=len(prompts)))
    if too_long and (recipe.data.on_too_long == "error" or not prompts):
        raise UserError(
            f"{len(too_long)} of {len(rows)} prompts with their preprompt are longer than data.max_length - "
            f"distill.max_new_tokens = {limit} tokens (first at {too_long[0]}). Raise data.max_length or lower "
            "distill.max_new_tokens" + ("." if not prompts else "; to leave them out, set data.on_too_long: drop.")
        )
    return prompts, len(too_long)


def select(
    prompts: list[dict], original: list[dict], preprompted: list[dict], keep: str, keep_cut_off: bool = False
) -> list[dict]:
    """Each prompt with both answers; the preprompted one is kept where it scores higher (keep: higher) or always
    (all), unless it was cut off at max_new_tokens (SFT would teach stopping mid-sentence; keep_cut_off: kept too)."""
    selected = []
    for prompt, plain, guided in zip(prompts, original, preprompted, strict=True):
        better = keep == "all" or guided["score"] > plain["score"]
        selected.append(
            prompt | {"original": plain, "preprompted": guided, "kept": better and (guided["finished"] or keep_cut_off)}
        )
    return selected


def answers(sampler: Sampler, prompts: list[dict], s) -> list[dict]:
    """Both answers to every prompt, each scored as a reply to the prompt without the preprompt."""

    def batch_records(start: int) -> list[dict]:
        batch = prompts[start : start + s.batch_size]
        plain_prompts = [p["prompt"] for p in batch]
        both = []
        for guided, shown in (
            (False, plain_prompts),
            (True, [with_preprompt(p["prompt"], p["preprompt"]) for p in batch]),
        ):
            samples = sampler.sample(shown, 1, seed=s.seed * 100_003 + start * 2 + guided)
            scores = sampler.score(samples, plain_prompts)
            finished = samples.has_eos.tolist()
            both.append(
                [
                    {"response": r, "score": round(c, 4), "finished": f}
                    for r, c, f in zip(samples.responses, scores, finished, strict=True)
                ]
            )
        return select(batch, both[0], both[1], s.keep, s.keep_cut_off)

    batches = sampler.share(list(range(0, len(prompts), s.batch_size)), batch_records)
    return [record for batch in batches for record in batch]


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summary(records: list[dict]) -> dict:
    """Kept fraction and mean safety scores: of every original answer, and of the kept answers (before and after)."""
    kept = [r for r in records if r["kept"]]
    return {
        "prompts": len(records),
        "kept": len(kept),
        "kept_fraction": len(kept) / len(records) if records else 0.0,
        "mean_original_score": mean([r["original"]["score"] for r in records]),
        "mean_preprompted_score": mean([r["preprompted"]["score"] for r in records]),
        "mean_kept_score": mean([r["preprompted"]["score"] for r in kept]),
        "mean_gain_where_kept": mean([r["preprompted"]["score"] - r["original"]["score"] for r in kept]),
    }


def distill_metrics(records: list[dict], seconds: float) -> dict:
    by_category = defaultdict(list)
    for record in records:
        by_category[record["risk_category"] or "none"].append(record)
    categories = {name: summary(rows) for name, rows in sorted(by_category.items())}
    return summary(records) | {"by_category": categories, "building_s": round(seconds, 1)}


def prepare(recipe: Recipe, echo: Callable[[str], None] = print) -> Stage:
    stage, rewards = prepare_generation_stage(recipe, BUILT)
    recipe.train = TRAIN_DEFAULTS | recipe.train
    prompts, dropped = read_safety_prompts(recipe, stage.tokenizer)
    if dropped:
        echo(f"data        {dropped} prompts too long with their preprompt: dropped (data.on_too_long: drop)")
    stage.data = {"prompts": prompts, "rewards": rewards}
    categories = sorted({p["risk_category"] for p in prompts if p["risk_category"]})
    s = recipe.distill
    stage.details = [
        f"prompts     {len(prompts)} from {recipe.data.train} (risk categories: {', '.join(categories) or 'none'})",
        f"distill     answers without and with a safety preprompt (max_new_tokens {s.max_new_tokens}), both scored "
        f"by {s.reward} without it; keep: {s.keep}; SFT on prompt -> kept answer",
    ]
    return stage


def train(stage: Stage, *, resume: bool, echo: Callable[[str], None] = print) -> dict:
    s, inputs = stage.recipe.distill, stage.data
    started = time.perf_counter()

    def build() -> list[dict]:
        with Sampler(stage, inputs["rewards"], s) as sampler:
            return answers(sampler, inputs["prompts"], s)

    records = build_once(stage, build)
    metrics = {"distill": distill_metrics(records, time.perf_counter() - started)}
    d = metrics["distill"]
    echo(
        f"distill: kept {d['kept']} of {d['prompts']} preprompted answers; mean safety score "
        f"{d['mean_original_score']:.3f} without the preprompt, {d['mean_preprompted_score']:.3f} with it"
    )
    rows = [
        {"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["preprompted"]["response"]}]}
        for r in records
        if r["kept"]
    ]
    return fine_tune(stage, rows, "distill-selected", metrics, resume)
