"""`posttrain eval gatt`: does a model keep a first-turn instruction as a dialogue goes on?

Every dialogue is played once per instruction a program can check (a language, a sign-off, a persona word, a reply
format): the instruction in the first turn only (system message or first user turn), the model's replies generated
turn by turn. The report gives, per turn, the share of replies that still comply, overall and per instruction; a
PNG plot sits beside it when matplotlib is installed (a dev dependency).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from posttrain.data.dialogues import read_user_turns
from posttrain.errors import UserError
from posttrain.inference.generation import GenerationSettings

FRENCH_WORDS = {"le", "la", "les", "est", "et", "vous", "je", "un", "une", "des", "pour", "avec", "que", "pas", "dans"}


def _words(reply: str) -> list[str]:
    return re.findall(r"[a-zà-ÿ']+", reply.lower())


def in_french(reply: str) -> bool:
    """At least three common French words, and more of them than 'the'/'and'/'is' (a small, crude test)."""
    words = _words(reply)
    french = sum(w in FRENCH_WORDS for w in words)
    return french >= 3 and french > sum(w in {"the", "and", "is", "you"} for w in words)


# name: (instruction, check of one reply)
CHECKS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "language": ("Always reply in French.", in_french),
    "sign_off": ('End every reply with the words "Fair winds!"', lambda r: r.strip().endswith("Fair winds!")),
    "persona": ('You are a pirate: say "Arr" in every reply.', lambda r: "arr" in _words(r)),
    "format": ('Begin every reply with "Answer:"', lambda r: r.strip().startswith("Answer:")),
}
FOLLOW_UPS = ["Tell me more.", "Can you give an example?", "Why is that?", "What else should I know?", "Sum it up."]


def dialogues_of(source: str, count: int, turns: int) -> list[list[str]]:
    """The first `count` dialogues, each cut or padded with generic follow-up questions to `turns` user turns."""
    dialogues = read_user_turns(source)[:count]
    return [(d + FOLLOW_UPS * turns)[:turns] for d in dialogues]


def first_turn(instruction: str, user: str, where: str) -> list[dict]:
    if where == "system":
        return [{"role": "system", "content": instruction}, {"role": "user", "content": user}]
    return [{"role": "user", "content": f"{instruction} {user}"}]


def gatt_eval(
    model_name: str,
    prompts: str,
    turns: int,
    count: int,
    instruction_in: str,
    settings: GenerationSettings,
    *,
    batch_size: int = 8,
    seed: int = 0,
    chat_template: str = "auto",
    echo: Callable[[str], None] = print,
) -> dict:
    """The per-turn compliance report of one model."""
    from transformers import set_seed

    from posttrain.inference.generation import answer_chats
    from posttrain.models.loading import load_run_model

    if turns < 2:
        raise UserError("--turns must be at least 2: the question is whether the instruction survives later turns.")
    if instruction_in not in ("system", "first_user"):
        raise UserError(f"--instruction-in must be system or first_user, got {instruction_in!r}.")
    dialogues = dialogues_of(prompts, count, turns)
    model, tokenizer = load_run_model(model_name, chat_template=chat_template)
    set_seed(seed)
    chats = [(name, first_turn(text, d[0], instruction_in), d) for name, (text, _) in CHECKS.items() for d in dialogues]
    complied = {name: [[] for _ in range(turns)] for name in CHECKS}
    echo(f"{len(chats)} dialogues ({len(dialogues)} x {len(CHECKS)} instructions), {turns} turns each")
    for turn in range(turns):
        for start in range(0, len(chats), batch_size):
            batch = chats[start : start + batch_size]
            replies = answer_chats(model, tokenizer, [messages for _, messages, _ in batch], settings)
            for (name, messages, dialogue), reply in zip(batch, replies, strict=True):
                complied[name][turn].append(CHECKS[name][1](reply))
                messages.append({"role": "assistant", "content": reply})
                if turn + 1 < turns:
                    messages.append({"role": "user", "content": dialogue[turn + 1]})
    by_instruction = {name: [sum(t) / len(t) for t in per_turn] for name, per_turn in complied.items()}
    overall = [sum(by_instruction[n][t] for n in CHECKS) / len(CHECKS) for t in range(turns)]
    return {
        "mode": "gatt",
        "model": model_name,
        "prompts": prompts,
        "dialogues": len(dialogues),
        "instruction_in": instruction_in,
        "instructions": {name: text for name, (text, _) in CHECKS.items()},
        "settings": settings.as_record() | ({"seed": seed} if settings.do_sample else {}),
        "by_turn": overall,
        "by_instruction": by_instruction,
        "examples": [{"instruction": name, "messages": messages} for name, messages, _ in chats[:: len(dialogues)]],
    }


def gatt_rows(report: dict) -> list[tuple[str, str]]:
    rows = [("turn", "  ".join(f"{t + 1:>5}" for t in range(len(report["by_turn"]))))]
    rows.append(("all", "  ".join(f"{v:5.2f}" for v in report["by_turn"])))
    rows += [(name, "  ".join(f"{v:5.2f}" for v in values)) for name, values in report["by_instruction"].items()]
    return rows


def plot(report: dict, path: Path) -> bool:
    """Compliance by turn as a PNG; False when matplotlib (a dev dependency) is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    turns = range(1, len(report["by_turn"]) + 1)
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, values in report["by_instruction"].items():
        axes.plot(turns, values, marker=".", alpha=0.6, label=name)
    axes.plot(turns, report["by_turn"], marker="o", color="black", linewidth=2, label="all")
    axes.set(xlabel="turn", ylabel="replies complying", ylim=(-0.02, 1.02), title=f"{report['model']}")
    axes.set_xticks(list(turns))
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return True
