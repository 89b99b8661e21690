"""The typed sections of a recipe. Each field's `help` is what errors and `posttrain recipes --keys` show;
`__post_init__` checks what a type alone cannot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from posttrain.errors import UserError


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class ModelSection:
    name: str = field(
        default="", metadata=_help("hub id, local folder, alias (tiny-llama2, smollm2-135m) or run folder")
    )
    adapter: str | None = field(default=None, metadata=_help("run folder whose adapter training continues from"))
    quantization: Literal["nf4", "fp4", "int8", "none"] = field(
        default="nf4", metadata=_help("weight quantization of the frozen base")
    )
    double_quant: bool = field(default=True, metadata=_help("quantize the 4-bit quantization constants too"))
    precision: Literal["auto", "fp32", "fp16", "bf16"] = field(
        default="auto",
        metadata=_help("compute precision; auto: bf16 on CUDA >= 8.0, fp16 below, fp32 on CPU"),
    )
    chat_template: str = field(
        default="llama2",
        metadata=_help("llama2 | chatml | model (keep the tokenizer's) | path to a .jinja file"),
    )

    def __post_init__(self) -> None:
        if not self.name:
            raise UserError("recipe key model.name is required: a hub id, local folder, alias or run folder.")


@dataclass
class LoraSection:
    r: int = field(default=16, metadata=_help("LoRA rank"))
    alpha: int = field(default=32, metadata=_help("LoRA scaling numerator (scale = alpha / r)"))
    dropout: float = field(default=0.05, metadata=_help("dropout on the LoRA input"))
    target_modules: str | list[str] = field(
        default="all-linear", metadata=_help("modules given adapters: all-linear or a list of names")
    )

    def __post_init__(self) -> None:
        if self.r < 1:
            raise UserError(f"recipe key lora.r must be at least 1, got {self.r}.")
        if not 0 <= self.dropout < 1:
            raise UserError(f"recipe key lora.dropout must be in [0, 1), got {self.dropout}.")


@dataclass
class DataSource:
    """One source of a mixture: `data.train: [{path: a.jsonl, weight: 2}, {path: b.jsonl, max_rows: 500}]`."""

    path: str = field(default="", metadata=_help("file, folder, glob, hub dataset id or builtin:NAME"))
    weight: float | None = field(
        default=None, metadata=_help("its training rows times this: 2 takes each twice, 0.5 a seeded random half")
    )
    max_rows: int | None = field(default=None, metadata=_help("read at most this many rows (a seeded random subset)"))

    def __post_init__(self) -> None:
        if not self.path:
            raise UserError("every data source needs a path: {path: FILE} with an optional weight or max_rows.")
        if self.weight is not None and self.max_rows is not None:
            raise UserError(f"data source {self.path}: give weight or max_rows, not both.")
        if self.weight is not None and self.weight <= 0:
            raise UserError(f"data source {self.path}: weight must be above 0, got {self.weight}.")
        if self.max_rows is not None and self.max_rows < 1:
            raise UserError(f"data source {self.path}: max_rows must be at least 1, got {self.max_rows}.")


Sources = str | list[str | DataSource]


def as_sources(spec: Sources | None) -> list[DataSource]:
    """A data key (one path, or a list of paths and {path, weight|max_rows}) as a list of sources."""
    if not spec:
        return []
    items = spec if isinstance(spec, list) else [spec]
    return [DataSource(item) if isinstance(item, str) else item for item in items]


@dataclass
class DataSection:
    train: Sources = field(
        default="",
        metadata=_help("file, folder, glob, hub id or builtin:NAME; or a list of them and {path, weight|max_rows}"),
    )
    eval: Sources | None = field(default=None, metadata=_help("held-out data, given like train"))
    eval_fraction: float | None = field(default=None, metadata=_help("or hold out this fraction of train"))
    format: str = field(default="auto", metadata=_help("auto, or a format name (see `posttrain data inspect`)"))
    max_length: int = field(default=1024, metadata=_help("longest example in tokens"))
    on_too_long: Literal["drop", "truncate", "error"] = field(
        default="drop", metadata=_help("what to do with longer examples; always reported with counts")
    )
    identical_pairs: Literal["drop", "error"] = field(
        default="drop", metadata=_help("preference pairs whose chosen equals rejected; reported with counts")
    )
    cut_long_prompts: bool = field(
        default=True,
        metadata=_help("preference pairs: cut a too-long prompt from the left (earliest turns first) first"),
    )
    text_blocks: bool = field(
        default=True,
        metadata=_help("text rows: join documents with EOS and cut into max_length blocks (false: on_too_long)"),
    )
    documents: Literal["file", "section"] = field(
        default="file", metadata=_help(".txt/.md files: one document per file, or per blank-line-separated section")
    )

    def __post_init__(self) -> None:
        if not self.train:
            raise UserError(
                "recipe key data.train is required: a file, folder, glob, hub dataset id or builtin:NAME, "
                "or a list of them."
            )
        if self.eval and self.eval_fraction:
            raise UserError("set data.eval or data.eval_fraction, not both.")
        if self.eval_fraction is not None and not 0 < self.eval_fraction < 1:
            raise UserError(
                f"data.eval_fraction must be above 0 and below 1, got {self.eval_fraction}; "
                "null (the default) holds nothing out."
            )
        if self.max_length < 8:
            raise UserError(f"data.max_length must be at least 8 tokens, got {self.max_length}.")


@dataclass
class RewardSection:
    margins: str | dict[str, float] = field(
        default="small",
        metadata=_help(
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


@dataclass
class SamplingSection:
    """What PPO and rejection sampling share: the reward run(s) and how responses are sampled."""

    reward: str | dict[str, str] = field(
        default="", metadata=_help("reward run folder, or {helpfulness: RUN, safety: RUN} (Llama 2's rule)")
    )
    max_new_tokens: int = field(default=64, metadata=_help("longest response sampled"))
    temperature: float = field(default=1.0, metadata=_help("sampling temperature"))
    top_k: int = field(default=0, metadata=_help("sample from the k likeliest tokens (0: all; rs only, ppo needs 0)"))
    top_p: float = field(default=1.0, metadata=_help("nucleus sampling mass (rs only, ppo needs 1.0)"))
    safety_threshold: float = field(default=0.15, metadata=_help("Llama 2: use the safety score below this"))
    truncated: Literal["fixed_score", "append_eos"] = field(
        default="fixed_score",
        metadata=_help(
            "a response cut off at max_new_tokens: fixed_score gets truncated_score; append_eos is scored by the "
            "reward run with EOS appended"
        ),
    )
    truncated_score: float = field(
        default=-10.0, metadata=_help("score of a cut-off response (truncated: fixed_score); below any real one")
    )
    missing_eos_penalty: float = field(
        default=1.0, metadata=_help("subtracted from the score of a response with no EOS, however it was scored")
    )
    seed: int = field(default=42, metadata=_help("seed of sampling and prompt order"))
    eval_prompts: str | None = field(
        default="builtin:pirate_heldout",
        metadata=_help(
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

    def reward_runs(self) -> list[str]:
        return list(self.reward.values()) if isinstance(self.reward, dict) else [self.reward]


@dataclass
class PPOSection(SamplingSection):
    SECTION: ClassVar[str] = "ppo"

    steps: int = field(default=20, metadata=_help("PPO iterations (rollout batch + optimisation)"))
    batch_size: int = field(default=8, metadata=_help("prompts per rollout batch (per process)"))
    mini_batch_size: int = field(default=4, metadata=_help("sequences per optimiser step"))
    ppo_epochs: int = field(default=2, metadata=_help("passes over each rollout batch"))
    learning_rate: float = field(default=5.0e-5, metadata=_help("AdamW learning rate of policy and value LoRA"))
    kl_beta: float = field(
        default=0.01, metadata=_help("per-token KL penalty to the reference (Llama 2 7B: 0.01); kl_target: its start")
    )
    kl_target: float | None = field(
        default=None,
        metadata=_help(
            "KL per response (nats) to hold: kl_beta then adapts each step (Ziegler et al. 2019); null: fixed kl_beta"
        ),
    )
    kl_horizon: int = field(
        default=10000,
        metadata=_help("with kl_target: a step moves kl_beta by at most 20% x (responses in the step) / kl_horizon"),
    )
    gamma: float = field(default=1.0, metadata=_help("discount"))
    lam: float = field(default=0.95, metadata=_help("GAE lambda"))
    clip_range: float = field(default=0.2, metadata=_help("policy ratio clip"))
    value_clip_range: float = field(default=0.2, metadata=_help("value change clip"))
    value_loss_coef: float = field(default=0.1, metadata=_help("weight of the value loss"))
    value_warmup_steps: int = field(
        default=0,
        metadata=_help("first steps that fit only the value network (it starts on the reward run's scale)"),
    )
    whiten_rewards: bool = field(default=True, metadata=_help("whiten the scores per batch (Llama 2)"))
    ptx_coef: float = field(
        default=0.0,
        metadata=_help(
            "InstructGPT's PPO-ptx: weight of the policy's NLL of ptx_data's answers, added to every policy update "
            "(0: off)"
        ),
    )
    ptx_data: str | None = field(
        default=None, metadata=_help("with ptx_coef: conversations (SFT data) whose last assistant turns stay likely")
    )
    max_grad_norm: float = field(default=1.0, metadata=_help("gradient clipping"))
    activation_checkpointing: bool = field(
        default=True, metadata=_help("recompute each layer in the backward pass: less memory, slower optimisation")
    )
    save_steps: int = field(default=10, metadata=_help("checkpoint every this many steps"))

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
        if self.kl_horizon < 1:
            raise UserError(f"ppo.kl_horizon must be at least 1 response, got {self.kl_horizon}.")
        if self.mini_batch_size > self.batch_size or self.batch_size % self.mini_batch_size:
            raise UserError(
                f"ppo.batch_size ({self.batch_size}) must be a multiple of ppo.mini_batch_size "
                f"({self.mini_batch_size})."
            )


@dataclass
class RSSection(SamplingSection):
    SECTION: ClassVar[str] = "rs"

    iterations: int = field(default=2, metadata=_help("rounds of sample -> keep the best -> fine-tune"))
    samples_per_prompt: int = field(default=4, metadata=_help("K: responses sampled per prompt, best one kept"))
    batch_size: int = field(default=8, metadata=_help("prompts sampled together (each K times)"))
    keep_cut_off: bool = field(
        default=False,
        metadata=_help("keep a prompt whose every answer was cut off (its best is then trained to stop there)"),
    )

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
        metadata=_help(
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

    reward: str = field(
        default="",
        metadata=_help("reward run scoring each dialogue's last reply (needed for samples_per_dialogue > 1)"),
    )
    instruction_in: Literal["system", "first_user"] = field(
        default="system", metadata=_help("where the trained dialogue keeps the instruction: system or first_user")
    )
    chain: int = field(default=0, metadata=_help("join single prompts into dialogues of this many turns (0: no)"))
    max_turns: int = field(default=0, metadata=_help("use at most this many user turns per dialogue (0: all)"))
    samples_per_dialogue: int = field(default=1, metadata=_help("K last replies sampled, the reward run's best kept"))
    short_form: float = field(default=0.5, metadata=_help("share of instructions in their short form (Hobby: chess.)"))
    instructions: list[str] = field(
        default_factory=list, metadata=_help("the recipe's own instructions (default: the built-in families)")
    )
    batch_size: int = field(default=8, metadata=_help("dialogues sampled together"))
    keep_cut_off: bool = field(
        default=False, metadata=_help("keep a reply cut off at max_new_tokens (SFT then teaches stopping there)")
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

    reward: str = field(default="", metadata=_help("safety reward run: scores both answers without the preprompt"))
    keep: Literal["higher", "all"] = field(
        default="higher", metadata=_help("higher: the preprompted answer only where it scores higher; all: always")
    )
    preprompt: str = field(default="", metadata=_help("generic safety preprompt (default: the built-in one)"))
    preprompts: dict[str, str] = field(
        default_factory=dict,
        metadata=_help("{risk category: preprompt with an answer template}, added to the built-in ones"),
    )
    by_category: bool = field(
        default=True, metadata=_help("use a row's risk_category preprompt when there is one (false: generic only)")
    )
    batch_size: int = field(default=8, metadata=_help("prompts sampled together"))
    keep_cut_off: bool = field(
        default=False, metadata=_help("keep a reply cut off at max_new_tokens (SFT then teaches stopping there)")
    )

    def __post_init__(self) -> None:
        if not self.reward:
            raise UserError(
                "recipe key distill.reward is required: the run folder of a safety reward model "
                "(`posttrain reward RECIPE` on safety preferences)."
            )
        if self.temperature <= 0:
            raise UserError(f"distill.temperature must be above 0 (answers are sampled), got {self.temperature}.")
