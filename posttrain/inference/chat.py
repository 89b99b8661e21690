"""`posttrain chat`: a terminal chat whose replies stream, with the whole history kept in the model's chat template.

The loop reads and writes through two functions (input() and the terminal by default), so a test drives it like a
user at the keyboard.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator

from posttrain.data.tool_calls import parse_reply, shown
from posttrain.inference.conversation import Conversation, make_room
from posttrain.inference.generation import GenerationSettings

HELP = (
    "/reset clears the history, /system TEXT sets the system prompt (alone: removes it), /tool TEXT answers the "
    "model's tool call with its result, /exit leaves"
)
Reply = Callable[[list[dict]], Generator[str, None, None]]


def chat_loop(
    conversation: Conversation,
    reply: Reply,
    read: Callable[[str], str],
    write: Callable[[str], None],
    fits: Callable[[list[dict]], bool] = lambda messages: True,
) -> None:
    """Read a line, act on a /command or stream the model's reply, until /exit or end of input."""
    write(f"{HELP}; Ctrl-C stops a reply.\n")
    while True:
        try:
            line = read("\nyou> ").strip()
        except EOFError:
            write("\n")
            return
        except KeyboardInterrupt:
            write("\n(Ctrl-D or /exit leaves)\n")
            continue
        if not line:
            continue
        tool_result = line.startswith("/tool ") and line.removeprefix("/tool ").strip()
        if line.startswith("/") and not tool_result:
            if not run_command(line, conversation, write):
                return
            continue
        conversation.turns.append(
            {"role": "tool", "content": tool_result} if tool_result else {"role": "user", "content": line}
        )
        if not make_room(conversation, fits, write):
            continue
        write("bot> ")
        text = show_reply(reply(conversation.messages()), write)
        if text:
            conversation.turns.append(assistant_turn(text, write))
        else:  # nothing was said: forget the question too, so turns keep alternating
            conversation.turns.pop()


def assistant_turn(text: str, write: Callable[[str], None]) -> dict:
    """The reply as a turn of the history; tool calls in it are shown as calls and kept as calls."""
    content, calls = parse_reply(text)
    for call in calls:
        write(f"[tool call] {shown(call)}\n")
    return (
        {"role": "assistant", "content": content, "tool_calls": calls}
        if calls
        else {"role": "assistant", "content": text}
    )


def run_command(line: str, conversation: Conversation, write: Callable[[str], None]) -> bool:
    """Act on a /command; False when the user leaves."""
    name, _, text = line.partition(" ")
    text = text.strip()
    if name in ("/exit", "/quit"):
        return False
    if name == "/reset":
        conversation.turns.clear()
        write("(history cleared)\n")
    elif name == "/system":
        conversation.system = text or None
        write(f"(system prompt set: {text})\n" if text else "(system prompt removed)\n")
    elif name == "/help":
        write(HELP + "\n")
    else:
        write(f"(unknown command {name}: {HELP})\n")
    return True


def show_reply(pieces: Generator[str, None, None], write: Callable[[str], None]) -> str:
    """Write the reply as it streams; Ctrl-C stops it and keeps what was shown."""
    shown = []
    try:
        for piece in pieces:
            write(piece)
            shown.append(piece)
    except KeyboardInterrupt:
        pieces.close()  # ends the generation thread
        write(" [stopped]")
    write("\n")
    return "".join(shown).strip()


def run_chat(
    model_name: str,
    system: str | None,
    settings: GenerationSettings,
    chat_template: str,
    read: Callable[[str], str],
    write: Callable[[str], None],
    tools: list[dict] | None = None,
) -> Conversation:
    """Load MODEL and chat with it (offering `tools`, if any) until the user leaves; returns the conversation."""
    from posttrain.data.prepare import chat_length
    from posttrain.inference.generation import stream_reply
    from posttrain.models.loading import context_length, load_run_model, resolve_model

    with contextlib.suppress(ImportError):
        import readline  # noqa: F401 - line editing and history for input()

    model, tokenizer = load_run_model(model_name, chat_template=chat_template)
    limit = context_length(resolve_model(model_name))
    sampling = "greedy" if not settings.do_sample else f"temperature {settings.temperature}, top-p {settings.top_p}"
    write(f"chatting with {model_name} ({sampling}, up to {settings.max_new_tokens} new tokens per reply)\n")
    conversation = Conversation(system)
    chat_loop(
        conversation,
        lambda messages: stream_reply(model, tokenizer, messages, settings, tools),
        read,
        write,
        fits=lambda messages: (
            chat_length(tokenizer, messages, add_generation_prompt=True, tools=tools) + settings.max_new_tokens <= limit
        ),
    )
    return conversation
