"""The PPO loop posttrain owns (TRL removed PPO in 1.13), on one shared base (see shared_model.py).

Each step: sample responses to a batch of prompts with the policy, score them with the reward run(s), shape
per-token rewards with the KL to the reference, estimate advantages with GAE, then optimise the clipped policy
and value losses for a few epochs of minibatches. Every random draw is seeded from (seed, step, process), so a
resumed run repeats an uninterrupted one exactly. Runs under accelerate: one process or several.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from posttrain.precision import check_weights_finite
from posttrain.rl.ppo_math import (
    adaptive_kl_beta,
    entropy,
    gae,
    kl_shaped_rewards,
    masked_mean,
    policy_loss,
    value_loss,
    whiten,
)
from posttrain.rl.sampling import reward_scores, sample
from posttrain.rl.shared_model import POLICY
from posttrain.runs import stopping

PPO_STATS = ("policy_loss", "value_loss", "clip_fraction", "entropy")  # per optimiser step, averaged per PPO step


@dataclass
class Rollout:
    """One batch of sampled responses and everything PPO computes about them before optimising."""

    batch: dict  # input_ids, attention_mask, position_ids of query + response
    query_length: int
    response_mask: torch.Tensor
    logprobs: torch.Tensor
    values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    scores: torch.Tensor  # the reward model's score, before whitening and the missing-EOS penalty
    kl: torch.Tensor  # per-token KL estimate to the reference
    texts: list[tuple[str, str]]  # (prompt, response)


def response_logprobs(logits: torch.Tensor, batch: dict, query_length: int, temperature: float) -> torch.Tensor:
    """Log-probabilities of the response tokens (the logits at position t predict token t + 1) under the
    distribution they were sampled from: the logits divided by the sampling temperature."""
    logits = logits[:, query_length - 1 : -1].float() / temperature
    tokens = batch["input_ids"][:, query_length:]
    return torch.log_softmax(logits, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


class PPOTrainer:
    def __init__(self, model, tokenizer, prompts: list[dict], settings, run, accelerator, echo=print, ptx=()):
        self.accelerator = accelerator
        self.settings, self.run, self.tokenizer, self.prompts, self.echo = settings, run, tokenizer, prompts, echo
        self.ptx = list(ptx)  # PPO-ptx's conversations (posttrain/rl/ptx.py); empty: no ptx loss
        self.roles = ["helpfulness", "safety"] if isinstance(settings.reward, dict) else ["reward"]
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.policy_params = [p for n, p in model.named_parameters() if p.requires_grad and f".{POLICY}." in n]
        optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate)
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.history: list[dict] = []
        self.skipped_updates = 0
        self.start_step = 0
        self.kl_beta = settings.kl_beta  # adapts each step when settings.kl_target is set

    @property
    def shared(self):
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------ rollout

    def _prompt_batch(self, step: int) -> list[dict]:
        """This process's prompts for a step: a seeded draw, so resuming needs no sampler state."""
        s, world, rank = self.settings, self.accelerator.num_processes, self.accelerator.process_index
        generator = torch.Generator().manual_seed(s.seed * 100_003 + step)
        order = torch.randperm(len(self.prompts), generator=generator).tolist()
        wanted = s.batch_size * world
        picks = (order * (wanted // len(order) + 1))[:wanted]
        return [self.prompts[i] for i in picks[rank::world]]

    def rollout(self, step: int) -> tuple[Rollout, dict]:
        s, shared = self.settings, self.shared
        timings = {}
        started = time.perf_counter()
        torch.manual_seed(s.seed * 100_003 + step * 1_009 + self.accelerator.process_index)
        # Every pass runs under the autocast the policy's optimisation runs under (accelerate wraps only the
        # prepared model), so at step 0 the policy and the reference agree exactly.
        with self.accelerator.autocast():
            samples = sample(shared, self.tokenizer, self._prompt_batch(step), s, self.accelerator.device)
        batch, query_length = samples.batch, samples.query_length
        timings["generation_s"] = time.perf_counter() - started

        started = time.perf_counter()
        with torch.no_grad(), self.accelerator.autocast():
            logits, values = self.model(**batch)
            logprobs = response_logprobs(logits, batch, query_length, s.temperature)
            ref_logprobs = response_logprobs(shared.reference_logits(batch), batch, query_length, s.temperature)
            scores = reward_scores(shared, samples, self.roles, s)
        values = values[:, query_length - 1 : -1].float()
        shaped = scores - s.missing_eos_penalty * (~samples.has_eos).float()
        if s.whiten_rewards and len(scores) > 1:
            shaped = whiten(shaped)
        mask = samples.response_mask.float()
        rewards, kl = kl_shaped_rewards(shaped, logprobs, ref_logprobs, mask, self.kl_beta)
        advantages, returns = gae(rewards, values * mask, mask, s.gamma, s.lam)
        advantages = whiten(advantages, mask)
        timings["scoring_s"] = time.perf_counter() - started
        prompts = [row["prompt"][-1]["content"] for row in samples.prompts]
        rollout = Rollout(
            batch,
            query_length,
            mask,
            logprobs,
            values * mask,
            advantages,
            returns,
            scores,
            kl,
            list(zip(prompts, samples.responses, strict=True)),
        )
        return rollout, timings

    # ------------------------------------------------------------ optimisation

    def optimise(self, rollout: Rollout, step: int) -> dict:
        """Epochs of clipped policy and value updates; during the value warm-up the value network alone."""
        s = self.settings
        warming_up = step < s.value_warmup_steps
        ptx = bool(self.ptx) and not warming_up
        stats = {key: [] for key in PPO_STATS + (("ptx_loss",) if ptx else ())}
        generator = torch.Generator().manual_seed(s.seed * 7_919 + step)
        size = rollout.response_mask.shape[0]
        for _ in range(s.ppo_epochs):
            for chunk in torch.randperm(size, generator=generator).split(s.mini_batch_size):
                mb = {k: v[chunk] for k, v in rollout.batch.items()}
                mask = rollout.response_mask[chunk]
                logits, values = self.model(**mb)
                logprobs = response_logprobs(logits, mb, rollout.query_length, s.temperature)
                values = values[:, rollout.query_length - 1 : -1].float()
                pg, clipped = policy_loss(
                    logprobs, rollout.logprobs[chunk], rollout.advantages[chunk], mask, s.clip_range
                )
                vf = value_loss(values, rollout.values[chunk], rollout.returns[chunk], mask, s.value_clip_range)
                # The warm-up keeps pg in the graph at weight 0, so that every process still reduces a gradient
                # for every parameter (DDP), then drops the policy's: AdamW leaves a parameter with no gradient be.
                loss = (0.0 if warming_up else 1.0) * pg + s.value_loss_coef * vf
                if ptx:
                    nll = self.ptx_loss(generator)
                    stats["ptx_loss"].append(nll.item())
                    loss = loss + s.ptx_coef * nll
                self.accelerator.backward(loss)
                if warming_up:
                    for param in self.policy_params:
                        param.grad = None
                self.accelerator.clip_grad_norm_(self.model.parameters(), s.max_grad_norm)
                self.optimizer.step()
                self.skipped_updates += getattr(self.optimizer, "step_was_skipped", False)  # fp16 overflow handled
                self.optimizer.zero_grad()
                with torch.no_grad():
                    ent = entropy(logits[:, rollout.query_length - 1 : -1] / s.temperature, mask)
                for key, value in zip(PPO_STATS, (pg, vf, clipped, ent), strict=True):
                    stats[key].append(value.item())
        return {key: sum(v) / len(v) for key, v in stats.items()}

    def ptx_loss(self, generator: torch.Generator) -> torch.Tensor:
        """The policy's mean NLL per token of a mini-batch of ptx answers, drawn with the step's generator."""
        from posttrain.rl.ptx import ptx_batch

        picks = torch.randint(len(self.ptx), (self.settings.mini_batch_size,), generator=generator).tolist()
        batch, query_length, mask = ptx_batch(self.tokenizer, [self.ptx[i] for i in picks], self.accelerator.device)
        logits, _ = self.model(**batch, with_values=False)
        return -masked_mean(response_logprobs(logits, batch, query_length, 1.0), mask)

    # ------------------------------------------------------------ the loop

    def train(self) -> list[dict]:
        s = self.settings
        self.shared.eval()  # no dropout: old and new log-probabilities must come from the same network
        for step in range(self.start_step, s.steps):
            rollout, timings = self.rollout(step)
            started = time.perf_counter()
            stats = self.optimise(rollout, step)
            check_weights_finite(self.shared, step + 1, self.run.checkpoints)  # before this step is saved
            timings["optimisation_s"] = time.perf_counter() - started
            record = self._record(step, rollout, stats, timings)
            self.history.append(record)
            if record["policy_updated"]:  # the policy has not moved during the value warm-up: nothing to control
                self.adapt_kl_beta(record["kl"])
            if self.accelerator.is_main_process:
                self.echo(
                    f"step {step + 1}/{s.steps}: score {record['score']:.3f}, kl {record['kl']:.3f} "
                    f"(kl_beta {record['kl_beta']:.4f}), entropy {record['entropy']:.2f}, "
                    f"response {record['response_length']:.1f} tokens"
                    + (f", ptx loss {record['ptx_loss']:.3f}" if "ptx_loss" in record else "")
                    + ("" if record["policy_updated"] else " (value warm-up: policy not updated)")
                )
                self._write_samples(step, rollout)
            stop = (
                stopping.requested()
            )  # SIGTERM or a first Ctrl-C: save this step and stop (posttrain/runs/stopping.py)
            if (step + 1) % s.save_steps == 0 or step + 1 == s.steps or stop:
                self.save_checkpoint(step + 1)
            if stop:
                stopping.raise_if_requested(step + 1, self.run)
        return self.history

    def adapt_kl_beta(self, kl: float) -> None:
        """The next step's KL coefficient, from this step's KL (the same on every process: it is reduced)."""
        s = self.settings
        if s.kl_target is not None:
            responses = s.batch_size * self.accelerator.num_processes
            self.kl_beta = adaptive_kl_beta(self.kl_beta, kl, s.kl_target, responses, s.kl_horizon)

    def _record(self, step: int, rollout: Rollout, stats: dict, timings: dict) -> dict:
        local = {
            "score": rollout.scores.float().mean(),
            "kl": rollout.kl.sum(dim=1).mean(),  # per response, summed over its tokens
            "response_length": rollout.response_mask.sum(dim=1).float().mean(),
        }
        reduced = {k: self.accelerator.reduce(v.to(self.accelerator.device), "mean").item() for k, v in local.items()}
        timed = {k: round(v, 3) for k, v in timings.items()}
        phase = {"policy_updated": step >= self.settings.value_warmup_steps}
        return {"step": step + 1, **reduced, "kl_beta": self.kl_beta, **phase, **stats, **timed}

    def _write_samples(self, step: int, rollout: Rollout) -> None:
        with (self.run.path / "samples.jsonl").open("a", encoding="utf-8") as handle:
            for (prompt, response), score in zip(rollout.texts, rollout.scores.tolist(), strict=True):
                handle.write(
                    json.dumps({"step": step + 1, "prompt": prompt, "response": response, "score": round(score, 4)})
                    + "\n"
                )

    # ------------------------------------------------------------ checkpoints

    def save_checkpoint(self, step: int) -> None:
        """Trainable weights (policy and value LoRA, value head), optimiser state, the fp16 loss scale, the KL
        coefficient of the next step and the metrics so far."""
        if not self.accelerator.is_main_process:
            return
        folder = self.run.checkpoints / f"checkpoint-{step}"
        staging = folder.with_name(folder.name + ".partial")
        staging.mkdir(parents=True, exist_ok=True)
        trainable = {n: p.detach().cpu() for n, p in self.shared.named_parameters() if p.requires_grad}
        scaler = self.accelerator.scaler  # fp16 only: the loss scale adapts as training goes
        torch.save(
            {
                "trainable": trainable,
                "optimizer": self.optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "step": step,
                "kl_beta": self.kl_beta,
                "history": self.history,
            },
            staging / "state.pt",
        )
        staging.rename(folder)

    def load_checkpoint(self, folder: Path) -> None:
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=False)
        params = dict(self.shared.named_parameters())
        with torch.no_grad():
            for name, value in state["trainable"].items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.accelerator.scaler is not None and state.get("scaler") is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self.history, self.start_step = state["history"], state["step"]
        self.kl_beta = state.get("kl_beta", self.settings.kl_beta)  # checkpoints before kl_target had a fixed one
        # samples.jsonl keeps only the steps the checkpoint covers, so a resumed run writes each step once
        samples = self.run.path / "samples.jsonl"
        if samples.exists() and self.accelerator.is_main_process:
            kept = [
                line
                for line in samples.read_text(encoding="utf-8").splitlines()
                if json.loads(line)["step"] <= self.start_step
            ]
            samples.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
