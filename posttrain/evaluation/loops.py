"""Degenerate text: whether an answer loops, one of the held-out check's bars after ppo and rs (issue #29).

An answer loops when a word 3-gram occurs three or more times in it, or one word comes four or more times in a row
(issue #19's PPO answers held "a compass needle through a compass needle" and "a beam beam beam"). Occurrences of a
3-gram may overlap ("arr arr arr arr arr" holds "arr arr arr" three times). Words are runs of letters and digits,
with apostrophes inside them ("it's"), compared lower-cased: punctuation and case do not hide a loop, so
"Matey, matey! MATEY... matey" is one word four times in a row.
"""

from __future__ import annotations

import re
from collections import Counter

WORD = re.compile(r"\w+(?:'\w+)*")
GRAM = 3  # words in an n-gram
GRAM_REPEATS = 3  # occurrences of one n-gram that make a loop
WORD_REPEATS = 4  # one word this many times in a row makes a loop


def words(text: str) -> list[str]:
    """The words of `text`, lower-cased, punctuation dropped."""
    return WORD.findall(text.lower())


def has_loop(text: str) -> bool:
    """Whether `text` repeats a word 3-gram three or more times, or one word four or more times in a row."""
    found = words(text)
    grams = Counter(tuple(found[i : i + GRAM]) for i in range(len(found) - GRAM + 1))
    if grams and max(grams.values()) >= GRAM_REPEATS:
        return True
    run = 1
    for previous, word in zip(found, found[1:], strict=False):
        run = run + 1 if word == previous else 1
        if run >= WORD_REPEATS:
            return True
    return False
