"""Continued pretraining keeps every token: documents are tokenized, each followed by EOS, joined and cut into
max_length blocks (the last one shorter), instead of one row per document cut or dropped at max_length.

A block may hold the end of one document and the start of the next; the EOS between them is what tells the model a
new document began, as in GPT-style pretraining.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BlockReport:
    lengths: list[int]  # tokens per document, EOS included
    blocks: int
    max_length: int

    @property
    def documents(self) -> int:
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        return sum(self.lengths)

    def line(self) -> str:
        return (
            f"text blocks {self.documents} documents, {self.tokens} tokens (EOS after each) -> {self.blocks} blocks "
            f"of up to {self.max_length} tokens; no token dropped"
        )


def document_ids(tokenizer, text: str) -> list[int]:
    """A document's tokens with one EOS at its end (the tokenizer's own EOS is not doubled)."""
    ids = tokenizer(text)["input_ids"]
    return ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]


def pack_documents(tokenizer, texts: list[str], max_length: int) -> tuple[list[dict], BlockReport]:
    """Rows of pre-tokenized `input_ids` (TRL trains on them as they are) and what went into them."""
    stream: list[int] = []
    lengths = []
    for text in texts:
        ids = document_ids(tokenizer, text)
        stream += ids
        lengths.append(len(ids))
    blocks = [{"input_ids": stream[i : i + max_length]} for i in range(0, len(stream), max_length)]
    return blocks, BlockReport(lengths, len(blocks), max_length)
