"""`posttrain rs`: Llama 2's rejection-sampling fine-tuning.

Each round samples rs.samples_per_prompt (K) responses to every prompt with the current policy, scores them with
the reward run(s) (Llama 2's rule for two), keeps the best per prompt and fine-tunes the policy on those answers
with SFT (`train:` holds any SFTConfig field). The next round samples from the fine-tuned policy.

Run folder: selected/round-N.jsonl (each prompt's kept answer and every candidate with its score), checkpoints/
round-N/ (round N's adapter and SFT checkpoints, for --resume), adapter/ (the last round's), metrics.json.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from posttrain.data.prepare import PreparedData
from posttrain.errors import UserError
from posttrain.methods import sft
from posttrain.methods.common import Stage, processes
from posttrain.methods.trl_backed import train_and_finish
from posttrain.recipe import Recipe
from posttrain.rl.setup import heldout_check, load_base_and_lora, prepare_rl_stage
from posttrain.runs import RunFolder, write_jsonl

# Round folders are this method's checkpoints: --resume continues the latest one.
ROUND_PATTERN = "round-*"

TRAIN_DEFAULTS = sft.TRAIN_DEFAULTS | {"assistant_only_loss": True}  # each round: SFT on the kept answers


def select_best(
    prompts: list[dict], candidates: list[list[dict]], missing_eos_penalty: float, keep_cut_off: bool = False
) -> list[dict]:
    """Per prompt, the candidate with the highest score (less the penalty if it never ended), and all of them.
    A prompt whose every candidate was cut off at max_new_tokens keeps none (response None): fine-tuning on a
    cut-off answer, which SFT ends with EOS, would teach the policy to stop mid-sentence (keep_cut_off: it does)."""
    selected = []
    for prompt, group in zip(prompts, candidates, strict=True):
        if not keep_cut_off and not any(c["finished"] for c in group):
            selected.append({"prompt": prompt["prompt"], "response": None, "score": None, "candidates": group})
            continue
        best = max(group, key=lambda c: c["score"] - missing_eos_penalty * (not c["finished"]))
        selected.append(
            {"prompt": prompt["prompt"], "response": best["response"], "score": best["score"], "candidates": group}
        )
    return selected


def sample_and_select(stage: Stage, prompts: list[dict], rewards: dict[str, Path], adapter: Path | None, number: int):
    """Round `number`'s best-of-K answers from the policy in `adapter`."""
    import torch

    candidates = sample_candidates(stage, prompts, rewards, adapter, number)
    gc.collect()  # the sampling model, before the fine-tuning loads its own
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    s = stage.recipe.rs
    return select_best(prompts, candidates, s.missing_eos_penalty, s.keep_cut_off)


def sample_candidates(stage: Stage, prompts, rewards: dict[str, Path], adapter: Path | None, number: int) -> list:
    """K scored answers to each prompt. Under several processes each samples every N-th batch and all get every
    answer: each batch is seeded from its position, so the answers are those one process would sample."""
    import torch

    from posttrain.launch import share_batches
    from posttrain.precision import autocast
    from posttrain.rl.sampling import reward_scores, sample
    from posttrain.rl.shared_model import SharedModel

    s = stage.recipe.rs
    base, lora = load_base_and_lora(stage)
    shared = SharedModel.for_sampling(base, lora, adapter, rewards)
    shared.eval()
    roles, k = list(rewards), s.samples_per_prompt

    def candidates_of(start: int) -> list[list[dict]]:
        torch.manual_seed(s.seed * 100_003 + number * 1_009 + start)  # the same draw when a round is redone
        # under the autocast SFT and reward training ran under, so scores are those the reward run was trained to
        with autocast(stage.precision, base.device.type):
            samples = sample(shared, stage.tokenizer, prompts[start : start + s.batch_size], s, base.device, k)
            scores = reward_scores(shared, samples, roles, s).tolist()
        finished = samples.has_eos.tolist()
        return [
            [
                {"response": samples.responses[j], "score": round(scores[j], 4), "finished": finished[j]}
                for j in range(i, i + k)
            ]
            for i in range(0, len(scores), k)
        ]

    batches = share_batches(processes(stage), list(range(0, len(prompts), s.batch_size)), candidates_of)
    return [group for batch in batches for group in batch]


def fine_tune(stage: Stage, selected: list[dict], adapter: Path | None, folder: Path, scores: dict) -> dict:
    """SFT of the policy in `adapter` on the kept answers; the new adapter lands in folder/adapter."""
    kept = [row for row in selected if row["response"] is not None]
    rows = [{"messages": row["prompt"] + [{"role": "assistant", "content": row["response"]}]} for row in kept]
    round_stage = replace(stage, adapter=adapter, run=RunFolder(folder), data=PreparedData("best-of-k", rows))
    trainer = sft.build_trainer(round_stage)
    resume = round_stage.run.latest_checkpoint() is not None
    metrics = train_and_finish(round_stage, trainer, resume=resume, extra_metrics=lambda: scores)
    shutil.rmtree(round_stage.run.checkpoints, ignore_errors=True)  # the adapter is what later rounds need
    return metrics


def round_scores(selected: list[dict], number: int) -> dict:
    every = [c["score"] for row in selected for c in row["candidates"]]
    kept = [row["score"] for row in selected if row["response"] is not None]
    if not kept:
        raise UserError(
            f"rs round {number}: every sampled answer to every prompt was cut off at rs.max_new_tokens, so there is "
            "nothing to fine-tune on. Raise rs.max_new_tokens (and data.max_length with it)."
        )
    return {
        "round": number,
        "mean_score": sum(every) / len(every),  # the policy's own level before this round's fine-tuning
        "best_score": sum(kept) / len(kept),  # what it is fine-tuned on
        "cut_off_prompts": len(selected) - len(kept),  # every answer cut off: left out of the fine-tuning
    }


def prepare(recipe: Recipe, echo: Callable[[str], None] = print) -> Stage:
    s = recipe.rs
    stage = prepare_rl_stage(recipe, prompt_room=s.max_new_tokens, echo=echo)
    # rs.seed seeds the fine-tuning too (its data order), unless the recipe gives train.seed
    recipe.train = TRAIN_DEFAULTS | {"seed": s.seed} | recipe.train
    stage.run = RunFolder(stage.run.path, checkpoint_pattern=ROUND_PATTERN, markers=())  # any round is resumable
    stage.details.append(
        f"rs          {s.iterations} rounds: {s.samples_per_prompt} samples per prompt (max_new_tokens "
        f"{s.max_new_tokens}, temperature {s.temperature}), the best kept, SFT on them"
    )
    return stage


def train(stage: Stage, *, resume: bool, echo: Callable[[str], None] = print) -> dict:
    s, prompts, rewards = stage.recipe.rs, stage.data.prompts, stage.data.rewards
    state, run_folder = processes(stage), stage.run
    adapter, history = stage.adapter, []
    for number in range(1, s.iterations + 1):
        folder = run_folder.checkpoints / f"round-{number}"
        if (folder / "metrics.json").is_file():  # finished before an interruption (written after adapter/)
            adapter = folder / "adapter"
            history.append(json.loads((folder / "metrics.json").read_text(encoding="utf-8")))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        selected_file = run_folder.path / "selected" / f"round-{number}.jsonl"
        started = time.perf_counter()
        # Every process samples its share of the prompts; each decides here, and the main process writes only
        # after the others joined its gathers, so all decide alike.
        if not selected_file.is_file():
            selected = sample_and_select(stage, prompts, rewards, adapter, number)
            if state.is_main_process:
                write_jsonl(selected_file, selected)
        state.wait_for_everyone()
        selected = [json.loads(line) for line in selected_file.read_text(encoding="utf-8").splitlines()]
        scores = round_scores(selected, number) | {"sampling_s": round(time.perf_counter() - started, 1)}
        started = time.perf_counter()
        metrics = fine_tune(stage, selected, adapter, folder, scores)
        metrics["fine_tuning_s"] = round(time.perf_counter() - started, 1)
        adapter = folder / "adapter"
        history.append(metrics)
        cut_off = scores["cut_off_prompts"]
        echo(
            f"round {number}/{s.iterations}: mean score {scores['mean_score']:.3f}, best of "
            f"{s.samples_per_prompt} {scores['best_score']:.3f}, SFT loss {metrics['train']['train_loss']:.4f}"
            + (f", {cut_off} prompts left out (all {s.samples_per_prompt} answers cut off)" if cut_off else "")
        )
    metrics = {
        "rounds": [
            {
                k: m.get(k)
                for k in ("round", "mean_score", "best_score", "cut_off_prompts", "sampling_s", "fine_tuning_s")
            }
            | {"train_loss": m["train"]["train_loss"]}
            for m in history
        ],
        # every round's fine-tuning together, as a TRL-trained run reports them (the GPU check reads the share)
        "fp16_skipped_steps": sum(m.get("fp16_skipped_steps", 0) for m in history),
        "final_step": sum(m.get("final_step", 0) for m in history),
    }
    if state.is_main_process:
        staging = run_folder.path / "adapter.partial"
        shutil.copytree(adapter, staging, dirs_exist_ok=True)
        shutil.rmtree(run_folder.adapter, ignore_errors=True)
        staging.rename(run_folder.adapter)
        stage.tokenizer.save_pretrained(run_folder.path)
    state.wait_for_everyone()  # every process checks its share of the held-out prompts on the saved adapter
    metrics["heldout"] = heldout_check(stage, None, echo)
    if state.is_main_process:
        run_folder.write_metrics(metrics | {"final": metrics["rounds"][-1]})
    return metrics
