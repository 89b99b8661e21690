"""The training methods, one row each: what the CLI, recipe checks, `posttrain plan`, the benchmarks and the
notebooks know of a method. Adding a method is one module in this package plus one row here.

Every method module has the same two functions, which `methods.common.run_method` calls:
    prepare(recipe, echo) -> Stage    everything that can be checked without loading weights
    train(stage, *, resume, echo) -> dict    train, write the run folder, return its metrics
This module imports nothing heavy: the CLI reads it to build `posttrain --help`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

from posttrain.method_sections import DistillSection, GAttSection, GRPOSection, PPOSection, RewardSection, RSSection

# A causal-LM adapter (a policy) can be continued by any method that trains one; a reward run is another head.
POLICIES = frozenset({"sft", "dpo", "orpo", "kto", "ppo", "rs", "grpo", "gatt", "distill"})


@dataclass(frozen=True)
class Method:
    name: str
    help: str  # the command's help line
    data: Literal["sft", "preference", "feedback", "prompts"]  # the kind of rows it reads (see posttrain.data)
    train_config: tuple[str, str] | None  # (module, class) of the TRL config behind `train:`; None: no `train:`
    sections: dict[str, type]  # recipe sections of its own, for what TRL has no field for
    continues_from: frozenset[str]  # methods whose runs it may continue (model.name or model.adapter)
    starts_from: tuple[str, ...]  # the runs its shipped recipes start from, in the order they are trained
    plan: Literal["training", "ppo", "rs", "grpo", "generation"]  # how `posttrain plan` estimates it
    score_head: bool = False  # trains a one-output score head (a reward model) instead of the LM head
    reference_adapter: bool = False  # keeps a frozen copy of the adapter it continues, as its reference

    @property
    def module(self) -> ModuleType:
        """The module that runs it: posttrain.methods.NAME (imported on use: it brings torch and TRL)."""
        return importlib.import_module(f"posttrain.methods.{self.name}")


METHODS = {
    method.name: method
    for method in (
        Method(
            name="sft",
            help="Supervised fine-tuning (instruction tuning) with QLoRA.",
            data="sft",
            train_config=("trl", "SFTConfig"),
            sections={},
            continues_from=POLICIES,
            starts_from=(),
            plan="training",
        ),
        Method(
            name="reward",
            help="Train a reward model on binary comparisons (Llama 2 / InstructGPT step 2).",
            data="preference",
            train_config=("trl", "RewardConfig"),
            sections={"reward": RewardSection},
            continues_from=frozenset({"reward"}),
            starts_from=(),
            plan="training",
            score_head=True,
        ),
        Method(
            name="dpo",
            help="Direct preference optimisation, usually on top of an SFT run.",
            data="preference",
            train_config=("trl", "DPOConfig"),
            sections={},
            continues_from=POLICIES,
            starts_from=("sft",),
            plan="training",
            reference_adapter=True,
        ),
        Method(
            name="orpo",
            help="ORPO: instruction tuning and preference alignment in one stage, from a base model.",
            data="preference",
            train_config=("posttrain.trl_compat", "ORPOConfig"),
            sections={},
            continues_from=POLICIES,
            starts_from=(),
            plan="training",
        ),
        Method(
            name="kto",
            help="KTO on unpaired feedback (answers marked good or bad, e.g. thumbs-up/down logs), after SFT.",
            data="feedback",
            train_config=("trl", "KTOConfig"),
            sections={},
            continues_from=POLICIES,
            starts_from=("sft",),
            plan="training",
            reference_adapter=True,
        ),
        Method(
            name="ppo",
            help="RLHF with PPO: policy, reference, value and reward adapters on one 4-bit base.",
            data="prompts",
            train_config=None,  # posttrain's own trainer: every setting is in the ppo: section
            sections={"ppo": PPOSection},
            continues_from=POLICIES,
            starts_from=("sft", "reward"),
            plan="ppo",
        ),
        Method(
            name="rs",
            help="Rejection-sampling fine-tuning (Llama 2): sample K answers, keep the reward run's best, SFT on them.",
            data="prompts",
            train_config=("trl", "SFTConfig"),  # each round fine-tunes on its kept answers with SFT
            sections={"rs": RSSection},
            continues_from=POLICIES,
            starts_from=("sft", "reward"),
            plan="rs",
        ),
        Method(
            name="grpo",
            help="GRPO: online RL from rewards you can check (rules, your functions) or reward runs, no value network.",
            data="prompts",
            train_config=("trl", "GRPOConfig"),
            sections={"grpo": GRPOSection},
            continues_from=POLICIES,
            starts_from=("sft", "reward"),
            plan="grpo",
            reference_adapter=True,  # with train.beta above 0, TRL keeps a frozen copy of the starting adapter
        ),
        Method(
            name="gatt",
            help="Ghost Attention (Llama 2): dialogues sampled with an instruction on every turn, SFT with it once.",
            data="prompts",
            train_config=("trl", "SFTConfig"),  # the SFT on the built dialogues
            sections={"gatt": GAttSection},
            continues_from=POLICIES,
            starts_from=("sft", "reward"),
            plan="generation",
        ),
        Method(
            name="distill",
            help="Safety context distillation (Llama 2): answers behind a safety preprompt, kept where safer, SFT.",
            data="prompts",
            train_config=("trl", "SFTConfig"),  # the SFT on the kept answers
            sections={"distill": DistillSection},
            continues_from=POLICIES,
            starts_from=("sft", "reward"),
            plan="generation",
        ),
    )
}
