"""The recipe sections of the methods whose settings TRL has no field for (reward, ppo, rs, grpo, gatt, distill),
each named in its row of posttrain.methods.METHODS. As in posttrain.sections, each field's `help` is what errors
and `posttrain recipes --keys` show; `__post_init__` checks what a type alone cannot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from posttrain.errors import UserError
from posttrain.sections import about


@dataclass
class RewardSection:
    margins: str | dict[str, float] = field(
        default="small",
        metadata=about(
            "margin per Llama 2 strength label: small (1, 2/3, 1/3, 0), large (3, 2, 1, 0), none, "
            "or a {label: margin} mapping; a margin column in the data wins"
        ),
    )

    def __post_init__(self) -> None:
        if isinstance(self.margins, str) and self.margins not in ("small", "large", "none"):
            raise UserError(f"reward.margins must be small, large, none or a mapping, got {self.margins!r}.")

    def margin_table(self) -> dict[str, float] | None:
        from posttrain.data.preferences import STRENGTH_MARGINS

        if isinstance(self.margins, dict):
            return self.margins
        return None if self.margins == "none" else STRENGTH_MARGINS[self.margins]


JUDGE = about(  # ppo.judge and rs.judge
    "a second reward run (same pairs, another seed) that also judges the held-out check; the policy never optimises "
    "it (null: none)"
)


@dataclass
class SamplingSection:
    """What ppo, rs, gatt and distill share: the reward run and how responses are sampled and cut-off ones scored."""

    # Keys of other methods' sections that this one's run would never read: refused, naming where they act.
    USED_ELSEWHERE: ClassVar[dict[str, str]] = {}

    reward: str | dict[str, str] = field(
        default="", metadata=about("reward run folder, or {helpfulness: RUN, safety: RUN} (Llama 2's rule)")
    )
    max_new_tokens: int = field(default=64, metadata=about("longest response sampled"))
    temperature: float = field(default=1.0, metadata=about("sampling temperature"))
    top_k: int = field(default=0, metadata=about("sample from the k likeliest tokens (0: all; ppo needs 0)"))
    top_p: float = field(default=1.0, metadata=about("nucleus sampling mass (ppo needs 1.0)"))
    truncated: Literal["fixed_score", "append_eos"] = field(
        default="fixed_score",
        metadata=about(
            "a response cut off at max_new_tokens: fixed_score gets truncated_score; append_eos is scored by the "
            "reward run with EOS appended"
        ),
    )
    truncated_score: float = field(
        default=-10.0, metadata=about("score of a cut-off response (truncated: fixed_score); below any real one")
    )
    seed: int = field(
        default=42, metadata=about("seed of sampling and prompt order (rs: and of its fine-tuning, unless train.seed)")
    )

    def reward_runs(self) -> list[str]:
        return list(self.reward.values()) if isinstance(self.reward, dict) else [self.reward]


@dataclass
class RLSection(SamplingSection):
    """What PPO and rejection sampling add: Llama 2's two reward runs, the missing-EOS penalty, the held-out check."""

    safety_threshold: float = field(default=0.15, metadata=about("Llama 2: use the safety score below this"))
    missing_eos_penalty: float = field(
        default=1.0, metadata=about("subtracted from the score of a response with no EOS, however it was scored")
    )
    eval_prompts: str | None = field(
        default="builtin:pirate_heldout",
        metadata=about(
            "prompts the run does not train on, for the held-out check at the end (win-rate over the start, "
            "perplexity, length, cut-off share); null: skip it"
        ),
    )

    def __post_init__(self) -> None:
        section = self.SECTION
        if not self.reward:
            raise UserError(
                f"recipe key {section}.reward is required: a reward run folder, or "
                "{helpfulness: RUN, safety: RUN} for Llama 2's two reward models."
            )
        if isinstance(self.reward, dict) and set(self.reward) != {"helpfulness", "safety"}:
            raise UserError(
                f"{section}.reward as a mapping takes exactly helpfulness and safety, got {sorted(self.reward)}."
            )
        if self.temperature <= 0:
            raise UserError(f"{section}.temperature must be above 0 (responses are sampled), got {self.temperature}.")


# The keys of ppo: and rs: that gatt and distill runs never read (one reward run, no held-out check of their own).
RL_ONLY = {
    "safety_threshold": "ppo and rs (Llama 2's rule for a helpfulness and a safety reward run; this method takes one)",
    "eval_prompts": "ppo and rs (their held-out check after training; check a gatt run with `posttrain eval gatt`, "
    "a distill run with `posttrain eval safety`)",
}


@dataclass
class PPOSection(RLSection):
    SECTION: ClassVar[str] = "ppo"

    steps: int = field(default=20, metadata=about("PPO iterations (rollout batch + optimisation)"))
    batch_size: int = field(default=8, metadata=about("prompts per rollout batch (per process)"))
    mini_batch_size: int = field(default=4, metadata=about("sequences per optimiser step"))
    ppo_epochs: int = field(default=2, metadata=about("passes over each rollout batch"))
    learning_rate: float = field(default=5.0e-5, metadata=about("AdamW learning rate of policy and value LoRA"))
    kl_beta: float = field(
        default=0.01, metadata=about("per-token KL penalty to the reference (Llama 2 7B: 0.01); kl_target: its start")
    )
    kl_target: float | None = field(
        default=None,
        metadata=about(
            "KL per response (nats) to hold: kl_beta then adapts each step (Ziegler et al. 2019); null: fixed kl_beta"
        ),
    )
    kl_horizon: int = field(
        default=10000,
        metadata=about("with kl_target: a step moves kl_beta by at most 20% x (responses in the step) / kl_horizon"),
    )
    gamma: float = field(default=1.0, metadata=about("discount"))
    lam: float = field(default=0.95, metadata=about("GAE lambda"))
    clip_range: float = field(default=0.2, metadata=about("policy ratio clip"))
    value_clip_range: float = field(default=0.2, metadata=about("value change clip"))
    value_loss_coef: float = field(default=0.1, metadata=about("weight of the value loss"))
    value_warmup_steps: int = field(
        default=0,
        metadata=about("first steps that fit only the value network (it starts on the reward run's scale)"),
    )
    whiten_rewards: bool = field(default=True, metadata=about("whiten the scores per batch (Llama 2)"))
    ptx_coef: float = field(
        default=0.0,
        metadata=about(
            "InstructGPT's PPO-ptx: weight of the policy's NLL of ptx_data's answers, added to every policy update "
            "(0: off)"
        ),
    )
    ptx_data: str | None = field(
        default=None, metadata=about("with ptx_coef: conversations (SFT data) whose last assistant turns stay likely")
    )
    max_grad_norm: float = field(default=1.0, metadata=about("gradient clipping"))
    activation_checkpointing: bool = field(
        default=True, metadata=about("recompute each layer in the backward pass: less memory, slower optimisation")
    )
    save_steps: int = field(default=10, metadata=about("checkpoint every this many steps"))
    kl_budget: float | None = field(
        default=None,
        metadata=about("most KL per response (nats) a step may reach; the held-out check says if every step did"),
    )
    judge: str | None = field(default=None, metadata=JUDGE)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, value, off in (("top_k", self.top_k, 0), ("top_p", self.top_p, 1.0)):
            if value != off:
                raise UserError(
                    f"ppo.{key} must be {off} (off), got {value}: PPO optimises the log-probabilities of the "
                    "distribution it samples from, and top-k/top-p truncate that distribution in a way the "
                    "policy's log-probabilities do not show. Shape sampling with ppo.temperature alone."
                )
        if self.kl_target is not None and self.kl_target <= 0:
            raise UserError(f"ppo.kl_target must be above 0 nats (null: a fixed kl_beta), got {self.kl_target}.")
        if not 0 <= self.value_warmup_steps < self.steps:
            raise UserError(
                f"ppo.value_warmup_steps must be at least 0 and below ppo.steps ({self.steps}), got "
                f"{self.value_warmup_steps}: the policy must be updated at least once."
            )
        if self.ptx_coef < 0:
            raise UserError(f"ppo.ptx_coef must be at least 0 (0: off), got {self.ptx_coef}.")
        if self.ptx_coef and not self.ptx_data:
            raise UserError(
                "ppo.ptx_coef is set but ppo.ptx_data is not: name the conversations whose answers the ptx loss keeps "
                "likely (the SFT data, e.g. builtin:pirate_sft), or set ppo.ptx_coef: 0."
            )
        if self.kl_budget is not None and self.kl_budget <= 0:
            raise UserError(f"ppo.kl_budget must be above 0 nats (null: none), got {self.kl_budget}.")
        if self.kl_horizon < 1:
            raise UserError(f"ppo.kl_horizon must be at least 1 response, got {self.kl_horizon}.")
        if self.mini_batch_size > self.batch_size or self.batch_size % self.mini_batch_size:
            raise UserError(
                f"ppo.batch_size ({self.batch_size}) must be a multiple of ppo.mini_batch_size "
                f"({self.mini_batch_size})."
            )


@dataclass
class RSSection(RLSection):
    SECTION: ClassVar[str] = "rs"

    iterations: int = field(default=2, metadata=about("rounds of sample -> keep the best -> fine-tune"))
    samples_per_prompt: int = field(default=4, metadata=about("K: responses sampled per prompt, best one kept"))
    batch_size: int = field(default=8, metadata=about("prompts sampled together (each K times)"))
    keep_cut_off: bool = field(
        default=False,
        metadata=about("keep a prompt whose every answer was cut off (its best is then trained to stop there)"),
    )
    judge: str | None = field(default=None, metadata=JUDGE)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples_per_prompt < 2:
            raise UserError(f"rs.samples_per_prompt must be at least 2 to choose from, got {self.samples_per_prompt}.")
        if self.iterations < 1:
            raise UserError(f"rs.iterations must be at least 1, got {self.iterations}.")


# One GRPO reward: exactly one of these kinds, and an optional weight.
REWARD_KINDS = {
    "run": "a posttrain reward run folder (scored on the policy's own 4-bit base)",
    "max_words": "1 when the answer has at most N words, else 0",
    "regex": "1 when the answer matches this regular expression (re.search), else 0",
    "exact_match": "1 when the answer, stripped, equals this column of the prompt's row (e.g. answer), else 0",
    "function": "your function, path/to/file.py:name or module:name, with TRL's reward-function signature",
}


@dataclass
class GRPOSection:
    rewards: list[dict] = field(
        default_factory=list,
        metadata=about(
            "list of rewards, each one of run: RUN | max_words: N | regex: PATTERN | exact_match: COLUMN | "
            "function: FILE.py:NAME, with an optional weight (default 1); their weighted sum is the reward"
        ),
    )

    def __post_init__(self) -> None:
        if not self.rewards:
            raise UserError(
                "recipe key grpo.rewards is required: a list of rewards, e.g. [{max_words: 40}, {run: runs/reward}] "
                f"(kinds: {', '.join(REWARD_KINDS)})."
            )
        for index, entry in enumerate(self.rewards):
            _check_reward(entry, f"grpo.rewards[{index}]")

    def reward_runs(self) -> list[str]:
        return [entry["run"] for entry in self.rewards if "run" in entry]


def _check_reward(entry, key: str) -> None:
    if not isinstance(entry, dict):
        raise UserError(f"{key}: expected a mapping such as {{max_words: 40}}, got {entry!r}.")
    kinds = [kind for kind in entry if kind in REWARD_KINDS]
    unknown = sorted(set(entry) - set(REWARD_KINDS) - {"weight"})
    if unknown or len(kinds) != 1:
        found = f"unknown keys {unknown}" if unknown else f"{len(kinds)} kinds"
        raise UserError(f"{key}: give exactly one of {', '.join(REWARD_KINDS)} (and a weight); found {found}.")
    kind, value, weight = kinds[0], entry[kinds[0]], entry.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, int | float):
        raise UserError(f"{key}.weight: expected a number, got {weight!r}.")
    if kind == "max_words" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UserError(f"{key}.max_words: expected a whole number of words above 0, got {value!r}.")
    if kind != "max_words" and not (isinstance(value, str) and value):
        raise UserError(f"{key}.{kind}: expected text, got {value!r}.")


@dataclass
class GAttSection(SamplingSection):
    SECTION: ClassVar[str] = "gatt"
    USED_ELSEWHERE: ClassVar[dict[str, str]] = RL_ONLY

    reward: str = field(
        default="",
        metadata=about("reward run scoring each dialogue's last reply (needed for samples_per_dialogue > 1)"),
    )
    instruction_in: Literal["system", "first_user"] = field(
        default="system", metadata=about("where the trained dialogue keeps the instruction: system or first_user")
    )
    chain: int = field(default=0, metadata=about("join single prompts into dialogues of this many turns (0: no)"))
    max_turns: int = field(default=0, metadata=about("use at most this many user turns per dialogue (0: all)"))
    samples_per_dialogue: int = field(default=1, metadata=about("K last replies sampled, the reward run's best kept"))
    short_form: float = field(default=0.5, metadata=about("share of instructions in their short form (Hobby: chess.)"))
    instructions: list[str] = field(
        default_factory=list, metadata=about("the recipe's own instructions (default: the built-in families)")
    )
    batch_size: int = field(default=8, metadata=about("dialogues sampled together"))
    missing_eos_penalty: float = field(
        default=1.0, metadata=about("with samples_per_dialogue > 1: subtracted from a cut-off reply's score")
    )
    keep_cut_off: bool = field(
        default=False, metadata=about("keep a reply cut off at max_new_tokens (SFT then teaches stopping there)")
    )

    def __post_init__(self) -> None:
        # the reward run is optional here: without one, each dialogue's single last reply is kept
        if self.temperature <= 0:
            raise UserError(f"gatt.temperature must be above 0 (replies are sampled), got {self.temperature}.")
        if self.samples_per_dialogue < 1 or (self.samples_per_dialogue > 1 and not self.reward):
            raise UserError(
                f"gatt.samples_per_dialogue is {self.samples_per_dialogue}: it takes gatt.reward (a reward run that "
                "picks the best last reply) above 1, and must be at least 1."
            )
        if self.chain == 1 or self.chain < 0:
            raise UserError(f"gatt.chain must be 0 (off) or at least 2 turns, got {self.chain}.")
        if not 0 <= self.short_form <= 1:
            raise UserError(f"gatt.short_form must be in [0, 1], got {self.short_form}.")


@dataclass
class DistillSection(SamplingSection):
    SECTION: ClassVar[str] = "distill"
    USED_ELSEWHERE: ClassVar[dict[str, str]] = RL_ONLY | {
        "missing_eos_penalty": "ppo, rs and gatt (distill keeps an answer by its score alone)"
    }

    reward: str = field(default="", metadata=about("safety reward run: scores both answers without the preprompt"))
    keep: Literal["higher", "all"] = field(
        default="higher", metadata=about("higher: the preprompted answer only where it scores higher; all: always")
    )
    preprompt: str = field(default="", metadata=about("generic safety preprompt (default: the built-in one)"))
    preprompts: dict[str, str] = field(
        default_factory=dict,
        metadata=about("{risk category: preprompt with an answer template}, added to the built-in ones"),
    )
    by_category: bool = field(
        default=True, metadata=about("use a row's risk_category preprompt when there is one (false: generic only)")
    )
    batch_size: int = field(default=8, metadata=about("prompts sampled together"))
    keep_cut_off: bool = field(
        default=False, metadata=about("keep a reply cut off at max_new_tokens (SFT then teaches stopping there)")
    )

    def __post_init__(self) -> None:
        if not self.reward:
            raise UserError(
                "recipe key distill.reward is required: the run folder of a safety reward model "
                "(`posttrain reward RECIPE` on safety preferences)."
            )
        if self.temperature <= 0:
            raise UserError(f"distill.temperature must be above 0 (answers are sampled), got {self.temperature}.")
