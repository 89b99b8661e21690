"""`posttrain serve`: a local web chat page in the spirit of the Llama 2 chat demos, built on gradio's ChatInterface.

Chat history for the session, a system prompt box, temperature / top-p / max-tokens controls, replies streamed
token by token, a stop button and a clear-history button (the bin icon of the chat). gradio is the optional extra
`pip install 'posttrain[serve]'`. The page binds to 127.0.0.1 unless --host says otherwise.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator
from dataclasses import replace

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


def build_page(model, tokenizer, title: str, system: str, settings: GenerationSettings, context: int):
    """The gradio app; `settings` gives the controls' starting values and the knobs the page does not show."""
    from posttrain.data.prepare import chat_length
    from posttrain.inference.generation import stream_reply

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

        def fits(messages: list[dict]) -> bool:
            return chat_length(tokenizer, messages, add_generation_prompt=True) + chosen.max_new_tokens <= context

        if not make_room(conversation, fits, notes.append):
            yield notes[0].strip()
            return
        yield from accumulate(stream_reply(model, tokenizer, conversation.messages(), chosen))

    start_temperature = settings.temperature if settings.do_sample else 0.0
    controls = [
        gr.Textbox(system, label="System prompt", lines=2, elem_id="system-prompt"),
        gr.Slider(
            0.0, 2.0, value=start_temperature, step=0.05, label="Temperature (0 = greedy)", elem_id="temperature"
        ),
        gr.Slider(0.05, 1.0, value=settings.top_p, step=0.05, label="Top-p", elem_id="top-p"),
        gr.Slider(1, context, value=settings.max_new_tokens, step=1, label="Max new tokens", elem_id="max-tokens"),
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


def accumulate(pieces: Generator[str, None, None]) -> Iterator[str]:
    """gradio shows the latest value whole: yield the reply so far after each piece. The stop button closes this
    generator, which closes `pieces` and so ends the generation."""
    text = ""
    with contextlib.closing(pieces):
        for piece in pieces:
            text += piece
            yield text


def serve(model_name: str, host: str, port: int, system: str, settings: GenerationSettings, chat_template: str) -> None:
    """Load MODEL and serve the page until Ctrl-C."""
    from posttrain.models.loading import context_length, load_run_model, resolve_model

    import_gradio()  # before the model loads: a missing extra is reported at once
    model, tokenizer = load_run_model(model_name, chat_template=chat_template)
    page = build_page(
        model, tokenizer, f"posttrain · {model_name}", system, settings, context_length(resolve_model(model_name))
    )
    page.launch(server_name=host, server_port=port, inbrowser=False, show_error=True)
