"""`posttrain chat`: driven through its input loop like a user at the keyboard, on tiny-llama2."""

import pytest
from typer.testing import CliRunner

from posttrain.cli import app
from posttrain.inference.chat import chat_loop
from posttrain.inference.conversation import Conversation
from posttrain.inference.generation import GenerationSettings, stream_reply

SYSTEM = "<<SYS>>\nBe brief.\n<</SYS>>\n\n"


def scripted(lines: list[str]):
    """An input() that types `lines` one by one, then ends the input like Ctrl-D."""
    remaining = list(lines)

    def read(prompt: str) -> str:
        if not remaining:
            raise EOFError
        return remaining.pop(0)

    return read


def fixed_reply(text: str):
    """A stand-in model that streams `text` word by word."""

    def reply(messages):
        for word in text.split(" "):
            yield word + " "

    return reply


@pytest.fixture
def seen_by_model(monkeypatch):
    """Record each prompt as the model sees it (rendered with the chat template) and the reply it streamed."""
    from posttrain.inference import generation

    seen = []

    def spy(model, tokenizer, messages, settings, tools=None):
        prompt = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=True)
        pieces = list(stream_reply(model, tokenizer, messages, settings, tools))
        seen.append((prompt, "".join(pieces).strip()))
        yield from pieces

    monkeypatch.setattr(generation, "stream_reply", spy)
    return seen


def test_history_is_rendered_with_the_llama2_template_and_reset_clears_it(seen_by_model):
    script = "hello\nand you?\n/reset\nagain\n/exit\n"
    args = ["chat", "tiny-llama2", "--system", "Be brief.", "--greedy", "--max-new-tokens", "8"]
    result = CliRunner().invoke(app, args, input=script)
    assert result.exit_code == 0, result.output
    (first, reply), (second, _), (after_reset, _) = seen_by_model
    assert first == f"<s>[INST] {SYSTEM}hello [/INST]"
    assert reply and reply in result.output  # streamed to the terminal
    assert second == f"<s>[INST] {SYSTEM}hello [/INST] {reply} </s><s>[INST] and you? [/INST]"
    assert "(history cleared)" in result.output
    assert after_reset == f"<s>[INST] {SYSTEM}again [/INST]"


def test_system_command_sets_and_removes_the_system_prompt():
    conversation, shown = Conversation(), []
    chat_loop(conversation, fixed_reply("Arr."), scripted(["/system Talk like a pirate.", "hi"]), shown.append)
    assert conversation.messages()[0] == {"role": "system", "content": "Talk like a pirate."}
    chat_loop(conversation, fixed_reply("Hello."), scripted(["/system"]), shown.append)
    assert [m["role"] for m in conversation.messages()] == ["user", "assistant"]
    assert "(system prompt removed)\n" in shown


def test_ctrl_c_stops_a_reply_and_the_chat_goes_on():
    def interrupted(messages):
        yield "Once upon"
        raise KeyboardInterrupt

    conversation, shown = Conversation(), []
    chat_loop(conversation, interrupted, scripted(["tell me a story"]), shown.append)
    chat_loop(conversation, fixed_reply("The end."), scripted(["and then?"]), shown.append)
    assert " [stopped]" in shown
    assert [m["content"] for m in conversation.turns] == ["tell me a story", "Once upon", "and then?", "The end."]


def test_closing_a_stream_stops_the_generation_thread():
    from posttrain.models.loading import load_run_model

    model, tokenizer = load_run_model("tiny-llama2")
    forward_passes = []
    model.register_forward_hook(lambda *_: forward_passes.append(1))
    messages = [{"role": "user", "content": "Tell me a long story."}]
    settings = GenerationSettings(max_new_tokens=300)

    full = "".join(stream_reply(model, tokenizer, messages, settings))
    assert full and len(forward_passes) == 300  # greedy tiny-llama2 never says EOS here
    forward_passes.clear()
    stream = stream_reply(model, tokenizer, messages, settings)
    next(stream)
    stream.close()  # what Ctrl-C in the chat, or the stop button of serve, does
    assert len(forward_passes) < 300


def test_oldest_exchanges_are_dropped_when_the_context_is_full():
    conversation, shown = Conversation(), []
    fits = lambda messages: len(messages) <= 2  # noqa: E731 - room for one question and its reply
    chat_loop(conversation, fixed_reply("One."), scripted(["first"]), shown.append, fits)
    chat_loop(conversation, fixed_reply("Two."), scripted(["second"]), shown.append, fits)
    assert [m["content"] for m in conversation.turns] == ["second", "Two."]
    assert any("oldest exchange" in line for line in shown)


def test_a_reward_run_cannot_chat(reward_run):
    result = CliRunner().invoke(app, ["chat", str(reward_run)], input="/exit\n")
    assert result.exit_code == 2 and "is a reward run: it scores replies" in result.output
