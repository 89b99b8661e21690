"""`posttrain serve`: a local web chat page in the spirit of the Llama 2 chat demos, built on gradio's ChatInterface,
and what it shares with the arena page (arena_page.py): the loaded models, their streamed replies, the address.

Chat history for the session, a system prompt box, temperature / top-p / max-tokens controls, replies streamed
token by token, a stop button and a clear-history button (the bin icon of the chat). gradio is the optional extra
`pip install 'posttrain[serve]'`. The page binds to 127.0.0.1 unless --host says otherwise, and a page bound to
any other address needs --auth USER:PASSWORD.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass, replace
from typing import Any

from posttrain.errors import UserError
from posttrain.inference.conversation import Conversation, make_room
from posttrain.inference.generation import GenerationSettings


def import_gradio():
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local page phones nowhere
    try:
        import gradio
    except ImportError:
        raise UserError("posttrain serve needs gradio, an optional extra: pip install 'posttrain[serve]'") from None
    return gradio


# ---------------------------------------------------------------- what the chat and the arena page share


@dataclass(frozen=True)
class Address:
    """Where the page listens, and the one login gradio asks for (None: no login)."""

    host: str
    port: int
    login: tuple[str, str] | None

    def launch(self, page) -> None:
        page.launch(server_name=self.host, server_port=self.port, auth=self.login, inbrowser=False, show_error=True)


def page_address(host: str, port: int, auth: str | None) -> Address:
    """The address from --host/--port/--auth. Anyone who reaches the page can run the models (and, on the arena,
    vote), so a page bound beyond this machine's loopback must ask for a password."""
    login = None
    if auth is not None:
        user, _, password = auth.partition(":")
        if not user or not password:
            raise UserError("--auth takes USER:PASSWORD, both non-empty (e.g. --auth ana:correct-horse).")
        login = (user, password)
    if login is None and not is_loopback(host):
        raise UserError(
            f"--host {host} opens the page to other machines, so it needs a login: add --auth USER:PASSWORD "
            "(or set POSTTRAIN_SERVE_AUTH), or leave --host at 127.0.0.1."
        )
    return Address(host, port, login)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # another host name: it may resolve to any interface
        return False


@dataclass(frozen=True)
class ServedModel:
    """A model loaded once for the page's lifetime, with its tokenizer and how many tokens it takes."""

    name: str
    model: Any
    tokenizer: Any
    context: int

    def fits(self, messages: list[dict], settings: GenerationSettings) -> bool:
        """Whether the chat and a reply of settings.max_new_tokens fit the model's context."""
        from posttrain.data.lengths import chat_length

        prompt = chat_length(self.tokenizer, messages, add_generation_prompt=True)
        return prompt + settings.max_new_tokens <= self.context

    def reply_so_far(self, messages: list[dict], settings: GenerationSettings) -> Iterator[str]:
        """The reply to a chat, streamed: the whole text so far after each new piece (gradio shows a value whole)."""
        from posttrain.inference.generation import stream_reply

        return accumulate(stream_reply(self.model, self.tokenizer, messages, settings))


def load_served_model(name: str, chat_template: str) -> ServedModel:
    from posttrain.models.loading import context_length, load_run_model, resolve_model

    model, tokenizer = load_run_model(name, chat_template=chat_template)
    return ServedModel(name, model, tokenizer, context_length(resolve_model(name)))


def accumulate(pieces: Generator[str, None, None]) -> Iterator[str]:
    """The text so far after each piece. Closing this generator (the stop button, a closed page) closes `pieces`
    and so ends the generation."""
    text = ""
    with contextlib.closing(pieces):
        for piece in pieces:
            text += piece
            yield text


# ---------------------------------------------------------------- the chat page


def message_text(content) -> str:
    """The text of a gradio chat message: a string, or (gradio 6) a list of {"type": "text", "text": ...} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    return "".join(part.get("text", "") for part in content or [] if isinstance(part, dict))


def conversation_of(history: list[dict], system: str, message: str) -> Conversation:
    turns = [
        {"role": m["role"], "content": message_text(m["content"])}
        for m in history
        if m["role"] in ("user", "assistant")
    ]
    return Conversation(system.strip() or None, turns + [{"role": "user", "content": message}])


def build_page(served: ServedModel, title: str, system: str, settings: GenerationSettings):
    """The gradio app; `settings` gives the controls' starting values and the knobs the page does not show."""
    gr = import_gradio()

    def respond(message: str, history: list[dict], system_prompt: str, temperature: float, top_p: float, max_tokens):
        chosen = replace(
            settings,
            max_new_tokens=int(max_tokens),
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else settings.temperature,
            top_p=top_p,
        )
        conversation, notes = conversation_of(history, system_prompt, message), []
        if not make_room(conversation, lambda messages: served.fits(messages, chosen), notes.append):
            yield notes[0].strip()
            return
        yield from served.reply_so_far(conversation.messages(), chosen)

    start_temperature = settings.temperature if settings.do_sample else 0.0
    controls = [
        gr.Textbox(system, label="System prompt", lines=2, elem_id="system-prompt"),
        gr.Slider(
            0.0, 2.0, value=start_temperature, step=0.05, label="Temperature (0 = greedy)", elem_id="temperature"
        ),
        gr.Slider(0.05, 1.0, value=settings.top_p, step=0.05, label="Top-p", elem_id="top-p"),
        gr.Slider(
            1, served.context, value=settings.max_new_tokens, step=1, label="Max new tokens", elem_id="max-tokens"
        ),
    ]
    return gr.ChatInterface(
        respond,
        chatbot=gr.Chatbot(label=title, elem_id="chat", buttons=["copy"]),
        textbox=gr.Textbox(placeholder="Message (Enter sends)", elem_id="message", submit_btn=True, stop_btn=True),
        additional_inputs=controls,
        additional_inputs_accordion=gr.Accordion("Settings", open=True),
        title=title,
        analytics_enabled=False,
        concurrency_limit=1,  # one generation at a time on the one model
        fill_height=True,
    )


def serve(model_name: str, address: Address, system: str, settings: GenerationSettings, chat_template: str) -> None:
    """Load MODEL and serve the chat page until Ctrl-C."""
    import_gradio()  # before the model loads: a missing extra is reported at once
    served = load_served_model(model_name, chat_template)
    address.launch(build_page(served, f"posttrain · {model_name}", system, settings))
