"""Tool calls as data: both shapes users bring read into one form, rendered by the shipped chat templates with the
loss on the assistant's calls and answers only, and a generated call read back as a call."""

import json

import pytest

from posttrain.data.formats import normalise
from posttrain.data.sources import Row
from posttrain.data.tool_calls import call_text, dataset_of, fits_schema, parse_reply
from posttrain.errors import UserError
from posttrain.methods import sft
from posttrain.recipe import load_recipe

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
RESULT = '{"city": "Paris", "temperature_c": 18}'
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
CANONICAL = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [CALL]},
        {"role": "tool", "content": RESULT},
        {"role": "assistant", "content": "It is 18 C in Paris."},
    ],
    "tools": [{"type": "function", "function": WEATHER}],
}
SHAREGPT = {  # LLaMA-Factory's glaive-style rows: the call and the tools as JSON text
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Weather in Paris?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}})},
        {"from": "observation", "value": RESULT},
        {"from": "gpt", "value": "It is 18 C in Paris."},
    ],
    "tools": json.dumps([WEATHER]),
}
ARGS = '{"city": "Paris"}'
OPENAI = {  # OpenAI-style rows: arguments as JSON text, call ids, content null beside the calls
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ARGS}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "name": "get_weather", "content": RESULT},
        {"role": "assistant", "content": "It is 18 C in Paris."},
    ],
    "tools": [{"type": "function", "function": WEATHER}],
}


def rows(*data) -> list[Row]:
    return [Row(d, f"data.jsonl line {i}") for i, d in enumerate(data, start=1)]


def test_sharegpt_function_calls_read_into_the_canonical_form():
    assert normalise(rows(SHAREGPT)) == ("sharegpt", [CANONICAL])


def test_openai_tool_calls_read_into_the_canonical_form():
    assert normalise(rows(OPENAI)) == ("messages", [CANONICAL])


def test_a_function_call_after_the_assistants_words_joins_that_turn():
    turns = SHAREGPT["conversations"]
    said = {"from": "gpt", "value": "Let me look."}
    _, [row] = normalise(rows(SHAREGPT | {"conversations": turns[:2] + [said] + turns[2:]}))
    assert row["messages"][2] == {"role": "assistant", "content": "Let me look.", "tool_calls": [CALL]}


def test_a_call_that_is_not_json_is_reported_by_row_and_turn():
    turns = list(SHAREGPT["conversations"])
    turns[2] = {"from": "function_call", "value": "get_weather(Paris)"}
    with pytest.raises(UserError, match=r"line 1 does not fit the sharegpt format .* turn 3: the call is text but not"):
        normalise(rows(SHAREGPT | {"conversations": turns}))


def test_the_dataset_keeps_each_calls_own_arguments():
    other = {"type": "function", "function": {"name": "calculate", "arguments": {"expression": "2 + 2"}}}
    second = json.loads(json.dumps(CANONICAL))
    second["messages"][2]["tool_calls"] = [other]
    dataset = dataset_of([CANONICAL, second, {"messages": CANONICAL["messages"][1:2] + CANONICAL["messages"][4:]}])
    assert dataset[0]["messages"][2]["tool_calls"] == [CALL]  # Arrow's merged struct would add expression: None
    assert dataset[1]["messages"][2]["tool_calls"] == [other]
    assert dataset[0]["tools"] == CANONICAL["tools"] and dataset[2]["tools"] is None


def learned_runs(write_recipe, jsonl, model: dict) -> list[str]:
    """The runs of consecutive tokens that carry loss in the row the SFT trainer trains on, each decoded."""
    recipe = load_recipe(str(write_recipe(model=model, data={"train": str(jsonl([OPENAI])), "max_length": 512})))
    stage = sft.prepare(recipe)
    row = sft.build_trainer(stage).train_dataset[0]
    runs, run = [], []
    for token, label in zip(row["input_ids"], row["labels"], strict=True):
        if label != -100:
            run.append(token)
        elif run:
            runs, run = runs + [run], []
    runs += [run] if run else []
    return [stage.tokenizer.decode(tokens) for tokens in runs]


def test_llama2_template_trains_on_the_call_and_the_answer_never_the_tool_result(write_recipe, jsonl):
    runs = learned_runs(write_recipe, jsonl, {"chat_template": "llama2"})
    assert runs == [call_text(CALL) + " </s>", "It is 18 C in Paris. </s>"]


def test_chatml_template_trains_on_the_call_and_the_answer_never_the_tool_result(write_recipe, jsonl):
    model = {"name": "smollm2-135m", "chat_template": "chatml"}  # tiny-llama2 has no ChatML tokens
    runs = learned_runs(write_recipe, jsonl, model)
    assert runs == [call_text(CALL) + "<|im_end|>", "It is 18 C in Paris.<|im_end|>"]


def test_a_generated_call_reads_back_as_the_call_the_template_wrote():
    assert parse_reply(call_text(CALL)) == ("", [CALL])
    assert parse_reply("Let me check.\n" + call_text(CALL)) == ("Let me check.", [CALL])
    assert parse_reply("<tool_call>\nget_weather(Paris)\n</tool_call>")[1] == []


def test_a_valid_call_names_an_offered_tool_with_its_required_arguments():
    tools = CANONICAL["tools"]
    assert fits_schema(CALL, tools)
    assert not fits_schema({"function": {"name": "get_weather", "arguments": {}}}, tools)
    assert not fits_schema({"function": {"name": "get_time", "arguments": {"city": "Paris"}}}, tools)
    assert not fits_schema({"function": {"name": "get_weather", "arguments": {"city": "Paris", "day": 1}}}, tools)


def test_data_inspect_reports_turns_by_role_and_tools_per_row(jsonl):
    from typer.testing import CliRunner

    from posttrain.cli import app

    plain = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    args = ["data", "inspect", str(jsonl([SHAREGPT, plain])), "--model", "tiny-llama2", "--chat-template", "llama2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (
        "turns by role: system 1, user 2, assistant 3, tool 1; 1 assistant turns call tools (1 calls)" in result.output
    )
    assert "tools per row: min 0, median 0, max 1 (1 distinct: get_weather)" in result.output


def test_chat_shows_a_call_as_a_call_and_tool_gives_its_result():
    from posttrain.inference.chat import chat_loop
    from posttrain.inference.conversation import Conversation

    replies = iter([call_text(CALL), "It is 18 C in Paris."])
    lines = ["Weather in Paris?", "/tool " + RESULT]

    def read(prompt: str) -> str:
        if not lines:
            raise EOFError  # the user ends the chat like Ctrl-D
        return lines.pop(0)

    def reply(messages):
        yield next(replies)

    shown, conversation = [], Conversation()
    chat_loop(conversation, reply, read, shown.append)
    assert '[tool call] get_weather({"city": "Paris"})\n' in shown
    assert conversation.turns == CANONICAL["messages"][1:]


def test_generate_offers_each_rows_tools_and_writes_the_calls_of_a_reply(monkeypatch, jsonl, tmp_path):
    from posttrain.inference import generation
    from posttrain.inference.generate import generate_file

    offered = []

    def fake_replies(model, tokenizer, chats, settings, tools=None):
        offered.extend(tools)
        return [generation.Reply(call_text(CALL), 20, True), generation.Reply("Hello.", 3, True)]

    monkeypatch.setattr(generation, "generate_replies_to_chats", fake_replies)
    prompts = jsonl([{"prompt": "Weather in Paris?", "tools": [WEATHER]}, {"prompt": "Hi"}])
    output = tmp_path / "answers.jsonl"
    generate_file("tiny-llama2", str(prompts), output, generation.GenerationSettings(), echo=lambda line: None)
    called, plain = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert offered == [CANONICAL["tools"], None]
    assert called["tool_calls"] == [CALL] and called["response"] == call_text(CALL)
    assert "tool_calls" not in plain


def test_a_tool_conversation_gives_its_prompt_with_the_tools_it_offers(tiny_model, jsonl):
    from posttrain.data.prompts import load_prompts
    from posttrain.models.loading import load_tokenizer

    [prompt] = load_prompts(str(jsonl([OPENAI])), load_tokenizer(tiny_model, "llama2"), 4096)
    assert prompt["prompt"] == CANONICAL["messages"][:2]
    assert prompt["tools"] == CANONICAL["tools"]
