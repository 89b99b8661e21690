"""Answering prompts with a model and its chat template (left padding, as generation needs)."""

from __future__ import annotations


def answer(model, tokenizer, prompts: list[str], max_new_tokens: int = 64, system: str | None = None) -> list[str]:
    """Greedy answers to single-turn prompts, decoded without special tokens."""
    import torch

    chats = [
        ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": p}] for p in prompts
    ]
    texts = [tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for chat in chats]
    was_training, side = model.training, tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    try:
        # The template already holds BOS where the model wants one.
        batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            output = model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
