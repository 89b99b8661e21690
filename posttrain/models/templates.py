"""Chat templates and the Llama-2 tokenizer conventions posttrain applies to every tokenizer."""

from __future__ import annotations

from pathlib import Path

from posttrain.errors import UserError

TEMPLATES = Path(__file__).parent / "chat_templates"
CHATML_TOKENS = ("<|im_start|>", "<|im_end|>")


def read_template(name: str) -> str:
    return (TEMPLATES / f"{name}.jinja").read_text(encoding="utf-8")


def prepare_tokenizer(tokenizer, chat_template: str):
    """Set the chat template, a pad token and right padding (training pads on the right)."""
    tokenizer.chat_template = _resolve_template(tokenizer, chat_template)
    if chat_template == "chatml":
        tokenizer.eos_token = "<|im_end|>"  # so generation stops at the end of a turn
    tokenizer.pad_token = choose_pad_token(tokenizer)
    tokenizer.padding_side = "right"
    return tokenizer


def _resolve_template(tokenizer, choice: str) -> str:
    if choice == "auto":  # for inference on a plain model: the template it ships with, else Llama 2's
        return tokenizer.chat_template or read_template("llama2")
    if choice == "model":
        if not tokenizer.chat_template:
            raise UserError(
                "model.chat_template: model was asked for, but this tokenizer has no chat template. "
                "Use llama2, chatml or a .jinja path."
            )
        return tokenizer.chat_template
    if choice == "chatml":
        missing = [t for t in CHATML_TOKENS if t not in tokenizer.get_vocab()]
        if missing:
            raise UserError(
                f"model.chat_template: chatml needs the tokens {', '.join(missing)}, which this "
                "tokenizer lacks. Use llama2 (or model) instead."
            )
        return read_template("chatml")
    if choice == "llama2":
        return read_template("llama2")
    path = Path(choice).expanduser()
    if not path.is_file():
        raise UserError(f"model.chat_template: {choice} is not llama2, chatml, model, or an existing .jinja file.")
    return path.read_text(encoding="utf-8")


def choose_pad_token(tokenizer) -> str:
    """A pad token that is not EOS (so no collator can mask the EOS label) and needs no new embedding.

    Llama 2 ships without one; its <unk> is the usual choice. Only a tokenizer with neither a separate pad nor
    an unk token falls back to EOS, which is still safe here because labels come from masks, not from pad ids.
    """
    for candidate in (tokenizer.pad_token, tokenizer.unk_token):
        if candidate and candidate != tokenizer.eos_token:
            return candidate
    return tokenizer.eos_token
