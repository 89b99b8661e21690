"""Replies from a model and its chat template: batched (left padding, as generation needs) or streamed."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from posttrain.errors import UserError


@dataclass(frozen=True)
class GenerationSettings:
    """The knobs of transformers' generate() that people know from its text-generation pipeline."""

    max_new_tokens: int = 256
    do_sample: bool = False  # False: greedy, and temperature/top_k/top_p are not used
    temperature: float = 0.7
    top_k: int = 50  # 0: no top-k filtering
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # 1.0: none

    def __post_init__(self):
        checks = [
            (self.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
            (self.repetition_penalty > 0, "--repetition-penalty must be above 0 (1.0 is none)"),
        ]
        if self.do_sample:
            checks += [
                (self.temperature > 0, "--temperature must be above 0 (use --greedy for deterministic replies)"),
                (self.top_k >= 0, "--top-k must be 0 (off) or more"),
                (0 < self.top_p <= 1, "--top-p must be in (0, 1]"),
            ]
        for ok, message in checks:
            if not ok:
                raise UserError(message + ".")

    def as_record(self) -> dict:
        """The settings as written next to each generated reply (sampling knobs only when sampling)."""
        record = asdict(self)
        if not self.do_sample:
            for key in ("temperature", "top_k", "top_p"):
                del record[key]
        return record

    def generate_kwargs(self, tokenizer) -> dict:
        # Greedy decoding clears the sampling knobs a model's own generation_config may set (Llama-2-chat sets
        # temperature 0.6 and top_p 0.9), which transformers would otherwise warn about on every call.
        sampling = {"temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": self.do_sample,
            "repetition_penalty": self.repetition_penalty,
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "use_cache": True,
        } | (sampling if self.do_sample else dict.fromkeys(sampling))


def encode_chats(tokenizer, chats: list[list[dict]], tools: list[list[dict] | None] | None = None):
    """Chats ending in a user (or tool) turn, rendered with the chat template (each with the tools it offers, if
    any) and left-padded into one batch."""
    tools = tools or [None] * len(chats)
    texts = [
        tokenizer.apply_chat_template(chat, tools=offered, tokenize=False, add_generation_prompt=True)
        for chat, offered in zip(chats, tools, strict=True)
    ]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # new tokens must follow each prompt directly
    try:
        # The template already holds BOS where the model wants one.
        return tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side


@dataclass(frozen=True)
class Reply:
    text: str  # decoded without special tokens, stripped
    tokens: int  # generated tokens, up to and including the EOS
    finished: bool  # ended with EOS, not cut off at max_new_tokens


def generate_replies_to_chats(
    model, tokenizer, chats: list[list[dict]], settings: GenerationSettings, tools: list | None = None
) -> list[Reply]:
    """One reply per chat (with its tools, if any), generated as one batch, with its length and whether it ended
    before max_new_tokens."""
    return generate_replies_to_batch(model, tokenizer, encode_chats(tokenizer, chats, tools), settings)


def continue_texts(model, tokenizer, texts: list[str], settings: GenerationSettings) -> list[Reply]:
    """One continuation per plain text, no chat template (how a base model is scored), generated as one batch."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(texts, return_tensors="pt", padding=True)  # BOS where the tokenizer puts one
    finally:
        tokenizer.padding_side = side
    return generate_replies_to_batch(model, tokenizer, batch, settings)


def generate_replies_to_batch(model, tokenizer, batch, settings: GenerationSettings) -> list[Reply]:
    """The replies that follow a left-padded batch of prompts."""
    import torch

    batch = batch.to(model.device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model.generate(**batch, **settings.generate_kwargs(tokenizer))
    finally:
        model.train(was_training)
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    is_eos = new_tokens == tokenizer.eos_token_id
    finished = is_eos.any(dim=1)
    lengths = torch.where(finished, is_eos.int().argmax(dim=1) + 1, new_tokens.shape[1])
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [
        Reply(text.strip(), length, done)
        for text, length, done in zip(texts, lengths.tolist(), finished.tolist(), strict=True)
    ]


def answer_chats(model, tokenizer, chats: list[list[dict]], settings: GenerationSettings) -> list[str]:
    """One reply per chat, generated as one batch and decoded without special tokens."""
    return [reply.text for reply in generate_replies_to_chats(model, tokenizer, chats, settings)]


def answer(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, system: str | None = None) -> list[str]:
    """Greedy answers to single-turn prompts."""
    chats = [
        ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}] for p in prompts
    ]
    return answer_chats(model, tokenizer, chats, GenerationSettings(max_new_tokens=max_new_tokens))


def stream_reply(
    model, tokenizer, messages: list[dict], settings: GenerationSettings, tools: list[dict] | None = None
) -> Iterator[str]:
    """The reply to a chat, piece by piece as it is generated.

    generate() runs in a thread and feeds transformers' TextIteratorStreamer. Closing this iterator early (Ctrl-C
    in `posttrain chat`, the stop button of `posttrain serve`) stops the generation within one token.
    """
    import torch
    from transformers import StoppingCriteriaList, TextIteratorStreamer

    stop = threading.Event()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    batch = encode_chats(tokenizer, [messages], [tools]).to(model.device)
    failure: list[BaseException] = []

    def generate() -> None:
        try:
            with torch.no_grad():
                model.generate(
                    **batch,
                    **settings.generate_kwargs(tokenizer),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([StopWhenSet(stop)]),
                )
        except BaseException as err:  # handed to the reader, which would otherwise wait forever
            failure.append(err)
            streamer.end()

    model.eval()
    worker = threading.Thread(target=generate, name="posttrain-generate", daemon=True)
    worker.start()
    try:
        yield from (piece for piece in streamer if piece)
    finally:
        stop.set()
        worker.join()
    if failure:
        raise failure[0]


class StopWhenSet:
    """A stopping criterion for generate(): stop every sequence once the event is set."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def room_for_replies(limit: int, settings: GenerationSettings) -> tuple[str, str]:
    """How load_prompts words a prompt too long to leave room for the reply."""
    return (
        f"{limit} (the model's context less --max-new-tokens {settings.max_new_tokens})",
        "Lower --max-new-tokens or shorten them.",
    )


def progress_bar(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generating", unit="prompt", disable=None)  # None: only on a terminal
