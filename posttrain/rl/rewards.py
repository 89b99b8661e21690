"""GRPO's rewards as TRL reward functions: f(prompts, completions, **columns) -> one float per completion.

Kinds (a recipe's grpo.rewards): built-in verifiable rewards (max_words, regex, exact_match), a user's function
(path/to/file.py:name or module:name, TRL's signature), and a posttrain reward run, whose LoRA adapter and score
head are put on the policy's own 4-bit base (as PPO does, posttrain.rl.shared_model), so no second base is loaded.

Everything that can be checked without weights (the regex compiles, the function imports, the column exists) is
checked by `check_reward`, so a mistake exits 2 before training starts.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

from posttrain.errors import UserError


def text_of(completion) -> str:
    """A completion's text: TRL passes conversational completions as [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, list):
        return "".join(message.get("content", "") for message in completion)
    return completion


def as_messages(value, role: str) -> list[dict]:
    return value if isinstance(value, list) else [{"role": role, "content": value}]


def kind_of(entry: dict) -> str:
    return next(key for key in entry if key != "weight")


def describe(entry: dict) -> str:
    kind = kind_of(entry)
    return f"{kind} {entry[kind]}" + (f" (weight {entry['weight']:g})" if "weight" in entry else "")


# ---------------------------------------------------------------- built-in verifiable rewards


def max_words(limit: int) -> Callable:
    def reward(completions, **_) -> list[float]:
        return [float(len(text_of(c).split()) <= limit) for c in completions]

    reward.__name__ = f"max_words_{limit}"
    return reward


def regex(pattern: str, key: str) -> Callable:
    try:
        compiled = re.compile(pattern)
    except re.error as err:
        raise UserError(f"{key}: {pattern!r} is not a valid regular expression ({err}).") from None

    def reward(completions, **_) -> list[float]:
        return [float(compiled.search(text_of(c)) is not None) for c in completions]

    reward.__name__ = "regex"
    return reward


def exact_match(column: str) -> Callable:
    def reward(completions, **columns) -> list[float]:
        answers = columns[column]
        return [float(text_of(c).strip() == str(a).strip()) for c, a in zip(completions, answers, strict=True)]

    reward.__name__ = f"exact_match_{column}"
    return reward


# ---------------------------------------------------------------- a user's function


def load_function(spec: str, key: str) -> Callable:
    """`path/to/file.py:name` or `module:name`; a missing file, module or name is a UserError naming it."""
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise UserError(f"{key}: {spec!r} should be path/to/file.py:function or module:function.")
    if where.endswith(".py") or "/" in where:
        path = Path(where).expanduser()
        if not path.is_file():
            raise UserError(f"{key}: reward file not found: {path}.")
        module_spec = importlib.util.spec_from_file_location(f"posttrain_reward_{path.stem}", path)
        module = importlib.util.module_from_spec(module_spec)
        try:
            module_spec.loader.exec_module(module)
        except Exception as err:  # the user's code: any error is theirs to see
            raise UserError(f"{key}: importing {path} failed: {type(err).__name__}: {err}") from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as err:
            raise UserError(f"{key}: cannot import module {where!r} ({err}); is it on PYTHONPATH?") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise UserError(f"{key}: {where} has no function {name!r}.")
    return guarded(function, f"{key} ({spec})")


def guarded(function: Callable, label: str) -> Callable:
    """The user's function, with its failures and wrong answers reported as a UserError naming it."""

    def reward(prompts, completions, **columns) -> list:
        try:
            scores = function(prompts=prompts, completions=completions, **columns)
        except Exception as err:
            raise UserError(f"{label} raised {type(err).__name__}: {err}") from err
        if not isinstance(scores, list | tuple) or len(scores) != len(completions):
            raise UserError(f"{label} must return a list of {len(completions)} numbers (one per completion).")
        if not all(s is None or (isinstance(s, int | float) and not isinstance(s, bool)) for s in scores):
            raise UserError(f"{label} returned {scores!r:.80}; expected numbers (or None where it does not apply).")
        return list(scores)

    reward.__name__ = getattr(function, "__name__", "function")
    return reward


# ---------------------------------------------------------------- a reward run on the policy's base


class RewardRunScore:
    """A reward run's score of each prompt + completion, its adapter active on the policy's base (no gradients),
    under the autocast of `precision`: TRL calls reward functions outside the training autocast, and a reward run
    scores as it was trained (in fp16 on a T4) only under it."""

    def __init__(self, peft_model, adapter_dir: Path, name: str, tokenizer, precision: str):
        from posttrain.rl.shared_model import _linear, _load_lora_onto

        self.model, self.name, self.tokenizer, self.precision = peft_model, name, tokenizer, precision
        score = _load_lora_onto(peft_model, adapter_dir, name, trainable=False)
        self.head = _linear(score, peft_model.config.hidden_size, peft_model.device)
        self.__name__ = f"reward_run_{adapter_dir.parent.name}"

    def __call__(self, prompts, completions, **_) -> list[float]:
        import torch

        from posttrain.precision import autocast

        pairs = zip(prompts, completions, strict=True)
        conversations = [as_messages(p, "user") + as_messages(c, "assistant") for p, c in pairs]
        texts = [self.tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
        batch = self.tokenizer(texts, padding=True, padding_side="right", add_special_tokens=False, return_tensors="pt")
        batch = batch.to(self.model.device)
        base, was_training = self.model.base_model, self.model.training
        active = base.active_adapter
        self.model.eval()  # no LoRA dropout in the score
        try:
            base.set_adapter(self.name)
            with torch.no_grad(), autocast(self.precision, self.model.device.type):
                hidden = base.model.model(**batch, use_cache=False).last_hidden_state.float()
                last = batch["attention_mask"].sum(dim=1) - 1
                scores = self.head(hidden[torch.arange(len(last), device=hidden.device), last]).squeeze(-1)
        finally:
            base.set_adapter(active)  # PEFT's switch also sets requires_grad: the policy trains again, this does not
            self.model.train(was_training)
        return scores.float().tolist()


# ---------------------------------------------------------------- the recipe's list


def check_reward(entry: dict, key: str, columns: set[str]) -> Callable | None:
    """The reward function of one grpo.rewards entry (None for a reward run: it needs the loaded model)."""
    kind, value = kind_of(entry), entry[kind_of(entry)]
    if kind == "max_words":
        return max_words(value)
    if kind == "regex":
        return regex(value, key)
    if kind == "exact_match":
        if value not in columns:
            raise UserError(f"{key}: exact_match compares with the {value!r} column, which the prompts do not have.")
        return exact_match(value)
    if kind == "function":
        return load_function(value, key)
    return None


def reward_functions(checked: list, runs: dict[int, Path], peft_model, tokenizer, precision: str) -> list:
    """TRL's reward_funcs, in the recipe's order: the reward runs (None in `checked`) get their adapters on
    `peft_model` now, and score under the autocast of `precision`."""
    return [
        function
        if function is not None
        else RewardRunScore(peft_model, runs[index], f"reward_{index}", tokenizer, precision)
        for index, function in enumerate(checked)
    ]
