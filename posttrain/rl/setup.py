"""What PPO and rejection sampling share before and around training: the reward runs (checked against the policy),
the prompts that leave room for a response, the plan lines, and the one 4-bit base their adapters sit on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from posttrain.data.prompts import prompt_sources, read_prompts, too_long_message
from posttrain.errors import UserError
from posttrain.evaluation.taught_text import TaughtText
from posttrain.methods.common import Stage, load_base, prepare_stage, processes
from posttrain.models.loading import lora_config, method_of_run, resolve_model
from posttrain.recipe import Recipe
from posttrain.runs import write_jsonl


@dataclass
class RLInputs:
    """A ppo or rs stage's data: the prompts, the adapter folder of each reward run by role, the held-out prompts
    (chats) of the check at the end with the SFT data's answers it scores beside them, and PPO-ptx's conversations
    (posttrain/rl/ptx.py)."""

    prompts: list[dict]
    rewards: dict[str, Path]
    heldout: list[list[dict]] = field(default_factory=list)
    ptx: list[dict] = field(default_factory=list)
    taught: TaughtText | None = None


def reward_runs(spec: str | dict[str, str]) -> dict[str, str]:
    """{role: run} for one reward run ("reward") or Llama 2's pair (helpfulness, safety)."""
    return dict(spec) if isinstance(spec, dict) else {"reward": spec}


def check_reward_run(run: str, stage: Stage, key: str) -> Path:
    """The adapter folder of a reward run trained on the same base model and tokenizer as the policy."""
    from transformers import AutoTokenizer

    ref = resolve_model(run)
    if not ref.is_run or method_of_run(ref.adapter.parent) != "reward":
        raise UserError(
            f"{key}: {run} is not a reward run. Train one with `posttrain reward RECIPE` and name its run folder here."
        )
    if ref.base != stage.model.base:
        raise UserError(
            f"{key}: {run} was trained on {ref.name}, but the policy's base is {stage.model.name}; "
            "PPO shares one base model, so both runs must use the same one."
        )
    reward_tokenizer = AutoTokenizer.from_pretrained(ref.tokenizer)
    if reward_tokenizer.get_vocab() != stage.tokenizer.get_vocab():
        raise UserError(f"{key}: {run} uses a different tokenizer from the policy; retrain it from the same base.")
    differences = tokenizer_differences(reward_tokenizer, stage.tokenizer)
    if differences:
        raise UserError(
            f"{key}: {run} and the policy ({stage.recipe.model.name}) render conversations differently: "
            f"{'; '.join(differences)}. The reward run would score text laid out unlike what it was trained on; "
            "train both runs with the same model.chat_template and tokenizer."
        )
    return ref.adapter


def tokenizer_differences(reward_tokenizer, policy_tokenizer) -> list[str]:
    """What the reward run's tokenizer renders or marks differently from the policy's (empty: none)."""
    differences = [
        f"{name} token {getattr(reward_tokenizer, name)!r} (reward) vs {getattr(policy_tokenizer, name)!r} (policy)"
        for name in ("bos_token", "eos_token", "pad_token")
        if getattr(reward_tokenizer, name) != getattr(policy_tokenizer, name)
    ]
    if reward_tokenizer.chat_template != policy_tokenizer.chat_template:
        differences.append("the chat template")
    return differences


def prepare_rl_stage(recipe: Recipe, prompt_room: int, echo: Callable[[str], None]) -> Stage:
    """The stage of a ppo or rs recipe with its prompts and reward runs, all checked before any weights load.
    `prompt_room` tokens of data.max_length are kept free for the response."""
    stage = prepare_stage(recipe)
    section = recipe.method  # ppo or rs: both sections hold reward and sampling settings
    runs = reward_runs(getattr(recipe, section).reward)
    rewards = {
        role: check_reward_run(run, stage, f"{section}.reward" + (f".{role}" if role != "reward" else ""))
        for role, run in runs.items()
    }
    prompts = prompts_that_fit(recipe, stage.tokenizer, prompt_room, echo)
    tagged = sum(p["safety"] for p in prompts)
    if tagged and "safety" not in rewards:
        raise UserError(
            f"{recipe.data.train}: {tagged} prompts are tagged safety, but {section}.reward names no "
            f"safety reward run. Give {section}.reward: {{helpfulness: RUN, safety: RUN}}, or drop the tags."
        )
    heldout, heldout_line = heldout_prompts(recipe, stage.tokenizer, prompt_room, prompts)
    stage.data = RLInputs(prompts, rewards, heldout)
    stage.details = [
        f"prompts     {len(prompts)} from {prompt_sources(prompts)} ({tagged} tagged safety)",
        f"reward      {', '.join(f'{role}: {path.parent}' for role, path in rewards.items())}",
        heldout_line,
    ]
    if heldout:
        stage.details += heldout_extras(stage)
    return stage


def heldout_extras(stage: Stage) -> list[str]:
    """The held-out check's second judge (checked like a reward run) and the SFT data's answers; their plan lines."""
    from posttrain.evaluation.taught_text import taught_text

    section = getattr(stage.recipe, stage.recipe.method)
    lines = []
    if section.judge:
        key = f"{stage.recipe.method}.judge"
        optimised = [path.resolve() for path in stage.data.rewards.values()]
        if check_reward_run(section.judge, stage, key).resolve() in optimised:
            raise UserError(
                f"{key}: {section.judge} is the reward run the policy optimises; a second judge is another reward run "
                "(the same pairs, another train.seed), e.g. trained with recipes/smollm2-135m/reward-judge.yaml."
            )
        lines.append(f"judge       {section.judge} (a second reward run, for the held-out check)")
    start = stage.adapter.parent if stage.adapter else None
    stage.data.taught, line = taught_text(start, getattr(section, "ptx_data", None), section.seed)
    return lines + [line]


def heldout_prompts(recipe: Recipe, tokenizer, prompt_room: int, train: list[dict]) -> tuple[list[list[dict]], str]:
    """The eval_prompts that fit and that the run does not train on, and the plan's line about them."""
    source = getattr(recipe, recipe.method).eval_prompts
    if not source:
        return [], "held-out    none (eval_prompts: null)"
    rows, too_long = read_prompts(source, tokenizer, recipe.data.max_length - prompt_room)
    seen = [row["prompt"] for row in train]
    fitting = [row["prompt"] for index, row in enumerate(rows) if index not in too_long]
    kept = [prompt for prompt in fitting if prompt not in seen]
    left_out = [f"{len(too_long)} too long"] if too_long else []
    left_out += [f"{len(fitting) - len(kept)} also training prompts"] if len(kept) < len(fitting) else []
    note = f" ({', '.join(left_out)}: left out)" if left_out else ""
    return kept, f"held-out    {len(kept)} prompts from {source}{note}, checked at the end"


HELDOUT_ANSWERS = "heldout.jsonl"  # in the run folder: one line per held-out prompt


def heldout_check(stage: Stage, kl_by_step: dict[int, float] | None, echo: Callable[[str], None]) -> dict | None:
    """The held-out report of a finished ppo or rs run (its adapter/ saved): the trained model against the one it
    started from, on stage.data.heldout, with PPO's KL per logged step against its budget (rs: None); None when
    there are no held-out prompts. Every process of the run calls it and checks its share of the prompts; all get
    the report, and the main process writes heldout.jsonl and prints."""
    from functools import partial

    from posttrain.evaluation.heldout import heldout_report
    from posttrain.evaluation.heldout_bars import heldout_rows, kl_bar
    from posttrain.launch import share_items

    if not stage.data.heldout:
        return None
    recipe, section = stage.recipe, getattr(stage.recipe, stage.recipe.method)
    judge = section.reward if isinstance(section.reward, str) else section.reward["helpfulness"]
    state = processes(stage)
    report = heldout_report(
        str(stage.adapter.parent) if stage.adapter else recipe.model.name,
        str(stage.run.path),
        judge,
        stage.model.base,
        stage.data.heldout,
        max_new_tokens=section.max_new_tokens,
        start_chat_template=recipe.model.chat_template,
        quantization=recipe.model.quantization,
        truncated_score=section.truncated_score if section.truncated == "fixed_score" else None,
        seed=section.seed,
        second_judge=section.judge,
        taught=stage.data.taught,
        echo=echo,
        share=partial(share_items, state),
    )
    # per response, summed over its tokens (ppo's last step; rs measures none)
    report["final_kl"] = kl_by_step[max(kl_by_step)] if kl_by_step else None
    if kl_by_step:
        report["bars"]["kl"] = kl_bar(kl_by_step, section.kl_budget)
    answers = report.pop("answers")
    if state.is_main_process:
        write_jsonl(stage.run.path / HELDOUT_ANSWERS, answers)
        echo(f"held-out answers of both models, their scores and perplexities: {stage.run.path / HELDOUT_ANSWERS}")
        for line in heldout_rows(report):
            echo(line)
    return report


def prompts_that_fit(recipe: Recipe, tokenizer, prompt_room: int, echo: Callable[[str], None]) -> list[dict]:
    """The recipe's prompts that leave `prompt_room` tokens of data.max_length for the response; longer ones are
    dropped and reported (data.on_too_long: drop) or refused (error)."""
    limit, section = recipe.data.max_length - prompt_room, recipe.method
    prompts, too_long = read_prompts(recipe.data.train, tokenizer, limit)
    if not too_long:
        return prompts
    wording = f"data.max_length - {section}.max_new_tokens = {limit}" if prompt_room else None
    message = too_long_message(list(too_long.values()), len(prompts), limit, wording)
    if recipe.data.on_too_long != "drop" or len(too_long) == len(prompts):
        how = "raise data.max_length" + (f" or lower {section}.max_new_tokens" if prompt_room else "")
        raise UserError(f"{message} To use them, {how}; to leave them out, set data.on_too_long: drop.")
    echo(f"data        {message.removesuffix('.')}: dropped (data.on_too_long: drop)")
    return [prompt for index, prompt in enumerate(prompts) if index not in too_long]


def load_base_and_lora(stage: Stage):
    """The (4-bit) base every adapter of PPO or rejection sampling sits on, and the config of a new LoRA."""
    return load_base(stage), lora_config(stage.recipe.lora)
