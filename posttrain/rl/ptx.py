"""PPO-ptx (InstructGPT, Ouyang et al. 2022): a language-modelling loss on good text mixed into every policy update,
so that what PPO gains in reward it does not pay for in fluency.

InstructGPT mixed in pretraining text; posttrain takes conversations (the SFT data): the loss is the policy's mean
negative log-likelihood of each conversation's last assistant turn given the turns before it, laid out exactly as a
sampled response follows its prompt (left-padded prompt, right-padded answer ending in EOS).
"""

from __future__ import annotations

import torch

from posttrain.data.formats import normalise
from posttrain.data.sources import read_rows
from posttrain.errors import UserError
from posttrain.inference.generation import encode_chats
from posttrain.rl.sampling import sequence_batch


def read_ptx(source: str, tokenizer, max_length: int) -> tuple[list[dict], str]:
    """([{"prompt": messages, "answer": token ids}], the plan's line): each conversation of `source` that fits
    max_length, its last assistant turn tokenized as the chat template renders it after the generation prompt, up to
    and including its EOS. A conversation that does not end in an assistant turn is a UserError; a too long one is
    left out."""
    rows = read_rows(source)
    try:
        _, examples = normalise(rows)
    except UserError as err:
        raise UserError(f"ppo.ptx_data: {err}") from None
    kept, too_long = [], 0
    for row, example in zip(rows, examples, strict=True):
        messages = example.get("messages")
        if not messages or messages[-1]["role"] != "assistant":
            raise UserError(
                f"{row.where}: ppo.ptx_data needs conversations that end in an assistant turn (the answer the ptx "
                "loss keeps likely); give SFT conversations (messages, conversations, Alpaca or prompt/completion)."
            )
        ids = render(tokenizer, messages, add_generation_prompt=False)
        if len(ids) > max_length:
            too_long += 1
            continue
        query = render(tokenizer, messages[:-1], add_generation_prompt=True)
        ends = [i for i in range(len(query), len(ids)) if ids[i] == tokenizer.eos_token_id]
        if ids[: len(query)] != query or not ends:
            raise UserError(
                f"{row.where}: the chat template does not render the answer as the generation prompt followed by the "
                "reply and EOS, so the ptx loss cannot lay it out as a sampled response."
            )
        kept.append({"prompt": messages[:-1], "answer": ids[len(query) : ends[0] + 1]})
    if not kept:
        raise UserError(f"{source}: every conversation is longer than data.max_length={max_length} tokens.")
    note = f" ({too_long} longer than data.max_length: left out)" if too_long else ""
    return kept, f"ptx         {len(kept)} answers from {source}{note}"


def render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> list[int]:
    """Token ids of a chat as encode_chats tokenizes it (the template holds BOS where the model wants one)."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def ptx_batch(tokenizer, examples: list[dict], device) -> tuple[dict, int, torch.Tensor]:
    """(batch, query length, answer mask): the prompts left-padded, each answer right-padded after its prompt."""
    query = encode_chats(tokenizer, [example["prompt"] for example in examples]).to(device)
    answers = [example["answer"] for example in examples]
    width = max(map(len, answers))
    ids = torch.tensor([a + [tokenizer.pad_token_id] * (width - len(a)) for a in answers], device=device)
    mask = torch.tensor([[1] * len(a) + [0] * (width - len(a)) for a in answers], device=device)
    batch = sequence_batch(
        torch.cat([query["input_ids"], ids], dim=1), torch.cat([query["attention_mask"], mask], dim=1)
    )
    return batch, query["input_ids"].shape[1], mask.float()
