"""`posttrain eval perplexity`: exp of the mean negative log-likelihood per token of a model on a text.

A plain text file (.txt, .md, ...) is one text; a data file (.jsonl .json .csv .parquet) gives one text per row
(raw `text`, or a conversation rendered with the model's chat template). A text longer than the window is scored
in overlapping sliding windows `stride` tokens apart, as in the transformers perplexity guide: every token but the
first is scored once, with at least window - stride tokens of context before it.
"""

from __future__ import annotations

import math
from pathlib import Path

from posttrain.errors import UserError


def perplexity(
    model_name: str, data: str, window: int = 1024, stride: int | None = None, chat_template: str = "auto"
) -> dict:
    """The report: perplexity, mean NLL per token, bits per UTF-8 byte, and what was scored."""
    from posttrain.models.loading import context_length, load_inference_tokenizer, load_run_model

    ref, tokenizer = load_inference_tokenizer(model_name, chat_template)
    window = min(window, context_length(ref))
    stride = stride or window // 2
    if not 1 <= stride < window:
        raise UserError(f"--stride must be at least 1 and below the window ({window} tokens), got {stride}.")
    texts, special = read_texts(data, tokenizer)
    model, tokenizer = load_run_model(model_name, chat_template=chat_template)
    total_nll, tokens = 0.0, 0
    for text in texts:
        ids = tokenizer(text, add_special_tokens=special)["input_ids"]
        nll, scored = sliding_window_nll(model, ids, window, stride)
        total_nll, tokens = total_nll + nll, tokens + scored
    if not tokens:
        raise UserError(f"{data}: every text is a single token; there is nothing to predict.")
    return {
        "mode": "perplexity",
        "model": model_name,
        "data": data,
        "texts": len(texts),
        "window": window,
        "stride": stride,
        "tokens_scored": tokens,
        "mean_nll": total_nll / tokens,
        "perplexity": math.exp(total_nll / tokens),
        "bits_per_byte": total_nll / math.log(2) / sum(len(t.encode("utf-8")) for t in texts),
    }


def read_texts(data: str, tokenizer) -> tuple[list[str], bool]:
    """(texts, whether the tokenizer should add BOS): a plain text file whole, else each row of a data file."""
    from posttrain.data.formats import normalise
    from posttrain.data.sources import SUFFIXES, read_rows

    path = Path(data).expanduser()
    if path.is_file() and path.suffix.lower() not in SUFFIXES:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{data} is not UTF-8 text (nor a .jsonl, .json, .csv or .parquet data file).") from None
        if not text.strip():
            raise UserError(f"{data} is empty; there is no text to score.")
        return [text], True
    _, examples = normalise(read_rows(data))
    if "text" in examples[0]:
        return [e["text"] for e in examples], True
    # a rendered conversation already holds BOS where the template puts it
    return [tokenizer.apply_chat_template(e["messages"], tokenize=False) for e in examples], False


def sliding_window_nll(model, ids: list[int], window: int, stride: int) -> tuple[float, int]:
    """(summed NLL in nats, tokens scored): every token but the first, each in the window that first reaches it."""
    import torch
    import torch.nn.functional as F

    total, scored, done = 0.0, 0, 1  # done: tokens already scored or, for the first, never predictable
    if len(ids) < 2:
        return total, scored
    for begin in range(0, len(ids) - 1, stride):
        end = min(begin + window, len(ids))
        chunk = torch.tensor([ids[begin:end]], device=model.device)
        with torch.no_grad():
            logits = model(input_ids=chunk).logits[0, :-1].float()
        nll = F.cross_entropy(logits, chunk[0, 1:], reduction="none")  # nll[k] is token begin + k + 1
        new = nll[done - begin - 1 :]
        total, scored, done = total + new.sum().item(), scored + new.numel(), end
        if end == len(ids):
            break
    return total, scored


def perplexity_rows(report: dict) -> list[tuple[str, str]]:
    return [
        ("model", report["model"]),
        ("data", f"{report['data']} ({report['texts']} texts, {report['tokens_scored']} tokens scored)"),
        ("perplexity", f"{report['perplexity']:.3f}"),
        ("mean NLL", f"{report['mean_nll']:.4f} nats/token, {report['bits_per_byte']:.4f} bits/byte"),
    ]
