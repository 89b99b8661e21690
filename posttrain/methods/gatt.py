"""`posttrain gatt`: Ghost Attention (Llama 2, section 3.3), which teaches a model to keep a first-turn instruction
for a whole dialogue.

Each dialogue gets an instruction (posttrain.data.gatt_instructions), added to EVERY user turn while the current
model samples the replies turn by turn. The trained example keeps the instruction in the first turn only (the system
message, or the first user turn: gatt.instruction_in) and puts the loss on the last assistant turn alone: the earlier
replies were written in a context the example no longer shows, so they are context, not targets. With a reward run,
K last replies are sampled and the best (scored in the trained context) is kept.

Run folder: gatt/dialogues.jsonl (the built dialogues, written before the SFT; --resume keeps it), then what SFT
writes: adapter/, metrics.json, checkpoints/.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable

from posttrain.data.dialogues import chain, multi_turn, read_user_turns
from posttrain.data.gatt_instructions import pick_instruction
from posttrain.data.prepare import chat_length
from posttrain.methods.common import Stage
from posttrain.methods.sft import TRAIN_DEFAULTS as SFT_TRAIN_DEFAULTS
from posttrain.recipe import Recipe
from posttrain.rl.context_distillation import Sampler, build_once, fine_tune, prepare_generation_stage

BUILT = "gatt/dialogues.jsonl"

TRAIN_DEFAULTS = SFT_TRAIN_DEFAULTS | {"assistant_only_loss": True}  # SFT on the built dialogues, loss on the replies


# ---------------------------------------------------------------- one dialogue's messages


def with_instruction(instruction: str, user: str) -> str:
    return f"{instruction} {user}"


def sampled_context(dialogue: dict, replies: list[str], turn: int) -> list[dict]:
    """What the model answers user turn `turn` (0-based) in: the instruction on every user turn."""
    messages = []
    for index in range(turn + 1):
        messages.append(
            {"role": "user", "content": with_instruction(dialogue["instruction"], dialogue["turns"][index])}
        )
        if index < turn:
            messages.append({"role": "assistant", "content": replies[index]})
    return messages


def trained_context(dialogue: dict, replies: list[str], where: str) -> list[dict]:
    """The dialogue up to its last user turn as the training example shows it: the instruction once, in the
    system message or the first user turn."""
    instruction, turns = dialogue["instruction"], dialogue["turns"]
    messages = [{"role": "system", "content": instruction}] if where == "system" else []
    for index, user in enumerate(turns):
        first = index == 0 and where == "first_user"
        messages.append({"role": "user", "content": with_instruction(instruction, user) if first else user})
        if index < len(turns) - 1:
            messages.append({"role": "assistant", "content": replies[index]})
    return messages


def training_row(record: dict) -> dict:
    """TRL's conversational prompt-completion form: the loss falls on the completion, the last assistant turn."""
    return {"prompt": record["messages"][:-1], "completion": record["messages"][-1:]}


# ---------------------------------------------------------------- the dialogues to build


def plan_dialogues(recipe: Recipe, tokenizer) -> tuple[list[dict], dict]:
    """Each dialogue's user turns (chained, capped, cut to fit data.max_length) and instruction, drawn from the
    section's seed; and counts for the plan."""
    s = recipe.gatt
    dialogues = read_user_turns(recipe.data.train)
    dialogues = multi_turn(chain(dialogues, s.chain) if s.chain else dialogues, recipe.data.train, "gatt.chain")
    if s.max_turns:
        dialogues = [turns[: s.max_turns] for turns in dialogues]
    rng, planned, shortened = random.Random(s.seed), [], 0
    for turns in dialogues:
        if s.instructions:
            instruction, families = rng.choice(s.instructions), "recipe"
        else:
            instruction, families = pick_instruction(rng, s.short_form)
        dialogue = {"turns": turns, "instruction": instruction, "families": families}
        fitting = turns_that_fit(dialogue, tokenizer, recipe.data.max_length, s.max_new_tokens)
        shortened += fitting < len(turns)
        if fitting >= 2:
            planned.append(dialogue | {"turns": turns[:fitting]})
    counts = {"read": len(dialogues), "shortened": shortened, "too_long": len(dialogues) - len(planned)}
    return planned, counts


def turns_that_fit(dialogue: dict, tokenizer, max_length: int, max_new_tokens: int) -> int:
    """How many turns can be sampled with every reply as long as max_new_tokens within max_length tokens."""
    for turn in range(len(dialogue["turns"])):
        context = sampled_context(dialogue, [""] * turn, turn)
        if chat_length(tokenizer, context, add_generation_prompt=True) + (turn + 1) * max_new_tokens > max_length:
            return turn
    return len(dialogue["turns"])


# ---------------------------------------------------------------- building with the current model


def build_dialogues(sampler: Sampler, dialogues: list[dict], s) -> list[dict]:
    """Sample every reply turn by turn (the instruction on each user turn), K at each dialogue's last turn."""
    replies: list[list[str]] = [[] for _ in dialogues]
    last: dict[int, list[dict]] = {}
    for turn in range(max(len(d["turns"]) for d in dialogues)):
        for final in (False, True):
            group = [
                i for i, d in enumerate(dialogues) if len(d["turns"]) > turn and (len(d["turns"]) == turn + 1) == final
            ]
            for i, result in zip(group, sample_turn(sampler, dialogues, replies, group, turn, final, s), strict=True):
                if final:
                    last[i] = result
                else:
                    replies[i].append(result)  # a reply cut off at max_new_tokens is still context
    return [record_of(d, replies[i], last[i], s) for i, d in enumerate(dialogues)]


def sample_turn(sampler: Sampler, dialogues: list[dict], replies: list[list[str]], group: list[int], turn, final, s):
    """The reply at `turn` of each dialogue in `group` (at its last turn: its K candidates, scored in the trained
    context), in group order. Every process samples a share of the batches; the next turn needs them all."""
    k = s.samples_per_dialogue if final else 1

    def batch_replies(start: int) -> list:
        batch = group[start : start + s.batch_size]
        prompts = [sampled_context(dialogues[i], replies[i], turn) for i in batch]
        samples = sampler.sample(prompts, k, seed=s.seed * 100_003 + turn * 1_009 + start * 2 + final)
        if not final:
            return samples.responses
        trained = [trained_context(dialogues[i], replies[i], s.instruction_in) for i in batch]
        scores = sampler.score(samples, trained) if s.reward else [None] * len(samples.responses)
        finished = samples.has_eos.tolist()
        return [
            [
                {"response": samples.responses[j], "score": scores[j], "finished": finished[j]}
                for j in range(n * k, (n + 1) * k)
            ]
            for n in range(len(batch))
        ]

    batches = sampler.share(list(range(0, len(group), s.batch_size)), batch_replies)
    return [result for batch in batches for result in batch]


def record_of(dialogue: dict, replies: list[str], candidates: list[dict], s) -> dict:
    """A built dialogue: its best finished last reply is trained on; with none finished it is left out (SFT would
    teach stopping mid-sentence) unless gatt.keep_cut_off says to keep it."""
    usable = [c for c in candidates if c["finished"] or s.keep_cut_off]
    if usable:
        best = max(usable, key=lambda c: (c["score"] or 0.0) - s.missing_eos_penalty * (not c["finished"]))
    else:
        best = candidates[0]  # recorded for the reader, not trained on
    turns = len(dialogue["turns"])
    return {
        "instruction": dialogue["instruction"],
        "families": dialogue["families"],
        "sampled_with": sampled_context(dialogue, replies, turns - 1)
        + [{"role": "assistant", "content": best["response"]}],
        "messages": trained_context(dialogue, replies, s.instruction_in)
        + [{"role": "assistant", "content": best["response"]}],
        "trained_turn": turns,  # the assistant turn the loss falls on (1-based): the last
        "candidates": candidates,
        "kept": bool(usable),
        "kept_score": best["score"],
    }


def build_metrics(records: list[dict], seconds: float) -> dict:
    kept = [r for r in records if r["kept"]]
    scored = [r for r in kept if r["candidates"][0]["score"] is not None]  # with a reward run
    scores = [c["score"] for r in scored for c in r["candidates"]]
    best = [r["kept_score"] for r in scored]
    return {
        "dialogues": len(records),
        "kept": len(kept),
        "mean_turns": sum(r["trained_turn"] for r in kept) / max(len(kept), 1),
        "families": dict(Counter(r["families"] for r in kept)),
        "mean_last_score": sum(scores) / len(scores) if scores else None,
        "kept_last_score": sum(best) / len(best) if best else None,
        "building_s": round(seconds, 1),
    }


# ---------------------------------------------------------------- the method


def prepare(recipe: Recipe, echo: Callable[[str], None] = print) -> Stage:
    stage, rewards = prepare_generation_stage(recipe, BUILT)
    recipe.train = TRAIN_DEFAULTS | recipe.train
    s = recipe.gatt
    dialogues, counts = plan_dialogues(recipe, stage.tokenizer)
    if not dialogues:
        from posttrain.errors import UserError

        raise UserError(
            f"{recipe.data.train}: no dialogue keeps two turns within data.max_length={recipe.data.max_length} "
            f"with gatt.max_new_tokens={s.max_new_tokens} per reply; raise the one or lower the other."
        )
    stage.data = {"dialogues": dialogues, "rewards": rewards}
    lost = f"; {counts['shortened']} shortened and {counts['too_long']} left out to fit data.max_length"
    best = f", best of {s.samples_per_dialogue} by {s.reward}" if s.reward else ""
    stage.details = [
        f"dialogues   {len(dialogues)} of {counts['read']} from {recipe.data.train}"
        + (lost if counts["shortened"] or counts["too_long"] else ""),
        f"gatt        instruction on every user turn while sampling (max_new_tokens {s.max_new_tokens}{best}); "
        f"trained with it in the {s.instruction_in.replace('_', ' ')} turn only, loss on the last reply",
    ]
    return stage


def train(stage: Stage, *, resume: bool, echo: Callable[[str], None] = print) -> dict:
    s, inputs = stage.recipe.gatt, stage.data
    started = time.perf_counter()

    def build() -> list[dict]:
        with Sampler(stage, inputs["rewards"], s) as sampler:
            return build_dialogues(sampler, inputs["dialogues"], s)

    records = build_once(stage, build)
    metrics = {"gatt": build_metrics(records, time.perf_counter() - started)}
    echo(f"gatt: {metrics['gatt']['kept']} of {len(records)} dialogues kept, written to {stage.run.built}")
    rows = [training_row(r) for r in records if r["kept"]]
    return fine_tune(stage, rows, "gatt-dialogues", metrics, resume)
