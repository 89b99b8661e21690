"""The instructions Ghost Attention teaches a model to keep for a whole dialogue: constraint families (hobbies,
language, public figure) alone or two at once, each in a long wording or a short one ("Figure: Napoleon.").
Llama 2 (section 3.3) built its set the same way; the lists and wordings here are posttrain's own."""

from __future__ import annotations

import random

HOBBIES = [
    "birdwatching", "rock climbing", "baking bread", "chess", "sailing", "gardening", "astronomy", "knitting",
    "surfing", "painting watercolours", "playing the drums", "fishing",
]  # fmt: skip
LANGUAGES = ["French", "Spanish", "German", "Italian", "Portuguese", "Dutch"]
FIGURES = [
    "Napoleon", "Marie Curie", "Albert Einstein", "Cleopatra", "Ada Lovelace", "Leonardo da Vinci",
    "Charles Darwin", "Amelia Earhart", "Isaac Newton", "Frida Kahlo",
]  # fmt: skip

# family: (values, long wording, short wording); {} takes the value.
FAMILIES = {
    "hobby": (HOBBIES, "Reply as someone whose great passion is {}, and let it show in every answer.", "Hobby: {}."),
    "language": (LANGUAGES, "Always reply in {}, whatever language I write in.", "Language: {}."),
    "figure": (FIGURES, "Stay in character as {} for the whole conversation.", "Figure: {}."),
}


def pick_instruction(rng: random.Random, short_form: float) -> tuple[str, str]:
    """(instruction, families) for one dialogue: one family, or two joined, each worded short with probability
    `short_form`. The same rng state always gives the same instruction."""
    count = rng.choice((1, 1, 2))  # mostly one constraint, as the long forms are already demanding
    families = rng.sample(sorted(FAMILIES), count)
    parts = []
    for family in families:
        values, long, short = FAMILIES[family]
        parts.append((short if rng.random() < short_form else long).format(rng.choice(values)))
    return " ".join(parts), "+".join(families)
