"""What Ghost Attention (gatt) and safety context distillation (distill) share: replies are sampled with a context
(an instruction, a safety preprompt) that the training example then leaves out, scored by a reward run as answers to
the prompt without it, and written to a data file in the run folder before the SFT that follows.

Sampling and scoring are rejection sampling's (posttrain.rl.sampling) on the same shared base: the policy frozen,
the reward run as a second adapter with its score head. Under several processes each samples every N-th batch
(Sampler.share) and every process gets the whole built data, the same as one process would build.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path

from posttrain.errors import UserError
from posttrain.launch import share_batches
from posttrain.methods.common import Stage, prepare_stage, processes
from posttrain.rl.setup import check_reward_run, load_base_and_lora
from posttrain.runs import RunFolder, write_jsonl


class BuiltDataRunFolder(RunFolder):
    """A run whose built data counts as progress: --resume keeps it even before SFT saved a checkpoint."""

    def __init__(self, path: str | Path, built: str):
        super().__init__(path)
        self.built = self.path / built

    def check_writable(self, *, resume: bool, overwrite: bool) -> None:
        if resume and self.recipe_file.is_file() and self.built.is_file() and self.latest_checkpoint() is None:
            if self.finished:
                raise UserError(f"--resume: {self.path} is already finished (metrics.json exists).")
            super().check_writable(resume=False, overwrite=True)  # the lock check; nothing is removed on resume
            return
        super().check_writable(resume=resume, overwrite=overwrite)


def prepare_generation_stage(recipe, built: str) -> tuple[Stage, dict[str, Path]]:
    """The stage and {"reward": adapter folder} of the section's reward run, if it names one (checked against
    the policy's base and chat template before any weights load)."""
    stage = prepare_stage(recipe)
    section = getattr(recipe, recipe.method)
    rewards = {}
    if section.reward:
        rewards["reward"] = check_reward_run(section.reward, stage, f"{recipe.method}.reward")
    stage.run = BuiltDataRunFolder(stage.run.path, built)
    return stage, rewards


class Sampler:
    """The stage's policy (frozen) and reward run on one base: samples replies and scores them in other contexts."""

    def __init__(self, stage: Stage, rewards: dict[str, Path], settings):
        from posttrain.rl.shared_model import SharedModel

        base, lora = load_base_and_lora(stage)
        self.shared = SharedModel.for_sampling(base, lora, stage.adapter, rewards)
        self.shared.eval()
        self.tokenizer, self.settings, self.precision = stage.tokenizer, settings, stage.precision
        self.device, self.processes = base.device, processes(stage)

    def share(self, starts: list[int], work: Callable[[int], list]) -> list[list]:
        """work(start) for every batch start, each process doing its share (posttrain.launch.share_batches): a
        batch's seed must follow from its start alone."""
        return share_batches(self.processes, starts, work)

    def sample(self, prompts: list[list[dict]], per_prompt: int, seed: int):
        """`per_prompt` replies to each prompt (consecutive), as posttrain.rl.sampling.Samples."""
        import torch

        from posttrain.precision import autocast
        from posttrain.rl.sampling import sample

        torch.manual_seed(seed)  # the same draw when a run is redone
        rows = [{"prompt": prompt, "safety": False} for prompt in prompts]
        with autocast(self.precision, self.device.type):
            return sample(self.shared, self.tokenizer, rows, self.settings, self.device, per_prompt)

    def score(self, samples, prompts: list[list[dict]]) -> list[float]:
        """The reward run's score of each sampled reply as an answer to `prompts` (one per sampled prompt), not to
        the prompt it was sampled from: the context the training example will show."""
        import torch

        from posttrain.inference.generation import encode_chats
        from posttrain.precision import autocast
        from posttrain.rl.sampling import reward_scores, samples_of

        per_prompt = len(samples.responses) // len(prompts)
        query = encode_chats(self.tokenizer, prompts).to(self.device)
        responses = samples.batch["input_ids"][:, samples.query_length :]
        output = torch.cat([query["input_ids"].repeat_interleave(per_prompt, dim=0), responses], dim=1)
        rows = [{"prompt": prompt, "safety": False} for prompt in prompts]
        rescored = samples_of(output, query, self.tokenizer, rows, self.settings, per_prompt)
        with autocast(self.precision, self.device.type):
            return reward_scores(self.shared, rescored, ["reward"], self.settings).tolist()

    def __enter__(self) -> Sampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        import torch

        del self.shared
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def build_once(stage: Stage, build: Callable[[], list[dict]]) -> list[dict]:
    """The built rows from the run folder (kept by --resume), or built now by every process (each its share) and
    written there by the main one. Written whole, then moved into place: a file that exists is complete."""
    path, state = stage.run.built, processes(stage)
    # Each process decides here; the main process writes only after the others joined its gathers, so all agree.
    if not path.is_file():
        rows = build()
        if state.is_main_process:
            write_jsonl(path, rows)
    state.wait_for_everyone()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def fine_tune(stage: Stage, rows: list[dict], data_name: str, extra_metrics: dict, resume: bool) -> dict:
    """SFT of the stage's policy on the built rows (`train:` holds any SFTConfig field), continuing its adapter."""
    from dataclasses import replace

    from trl import SFTConfig, SFTTrainer

    from posttrain.data.prepare import PreparedData
    from posttrain.methods.trl_backed import train_and_finish, trl_config, trl_trainer

    if not rows:
        raise UserError(
            f"{stage.recipe.method}: no example was kept, so there is nothing to fine-tune on (see {stage.run.built}). "
            + why_none_kept(stage.recipe)
        )
    sft_stage = replace(stage, data=PreparedData(data_name, rows))
    trainer = trl_trainer(SFTTrainer, trl_config(SFTConfig, sft_stage), sft_stage)
    resume = resume and stage.run.latest_checkpoint() is not None  # built data but no SFT checkpoint: start the SFT
    return train_and_finish(sft_stage, trainer, resume=resume, extra_metrics=lambda: extra_metrics)


def why_none_kept(recipe) -> str:
    """What to change in the recipe when building kept no example."""
    method = recipe.method
    section = getattr(recipe, method)
    if not section.keep_cut_off:
        return f"Replies cut off at {method}.max_new_tokens are left out: raise it, or set {method}.keep_cut_off: true."
    if section.truncated == "fixed_score":
        hint = (
            f"Cut-off replies score {method}.truncated_score ({section.truncated_score}) under {method}.truncated: "
            f"fixed_score: raise {method}.max_new_tokens, or set {method}.truncated: append_eos"
        )
        return hint + (f", or {method}.keep: all." if method == "distill" else ".")
    if method == "distill":
        return "No preprompted answer scored above the original: set distill.keep: all, or give a stronger preprompt."
    return "See the built rows for why."
