"""A conversation held over several turns, and the oldest turns dropped when it outgrows the model's context:
what `posttrain chat` and `posttrain serve` share."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Conversation:
    """The system prompt and the user/assistant (and tool) turns so far."""

    system: str | None = None
    turns: list[dict] = field(default_factory=list)

    def messages(self) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns


def make_room(conversation: Conversation, fits: Callable[[list[dict]], bool], write: Callable[[str], None]) -> bool:
    """Drop the oldest exchanges until the chat fits the model's context; False if the new message alone does not."""
    dropped = 0
    while not fits(conversation.messages()) and len(conversation.turns) > 1:
        del conversation.turns[0]  # a user turn, then what answered it (a reply, or calls and their results)
        while len(conversation.turns) > 1 and conversation.turns[0]["role"] != "user":
            del conversation.turns[0]
        dropped += 1
    if dropped:
        write(f"(the {dropped} oldest exchange(s) no longer fit the model's context and were dropped)\n")
    if not fits(conversation.messages()):
        conversation.turns.pop()
        write("(that message does not fit the model's context with room for a reply; shorten it)\n")
        return False
    return True
