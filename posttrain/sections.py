"""The typed sections every recipe has: model, lora and data (posttrain.method_sections holds each method's own).
Each field's `help` is what errors and `posttrain recipes --keys` show; `__post_init__` checks what a type alone
cannot."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from posttrain.errors import UserError


def about(text: str) -> dict:
    return {"help": text}


@dataclass
class ModelSection:
    name: str = field(
        default="", metadata=about("hub id, local folder, alias (tiny-llama2, smollm2-135m) or run folder")
    )
    adapter: str | None = field(default=None, metadata=about("run folder whose adapter training continues from"))
    quantization: Literal["nf4", "fp4", "int8", "none"] = field(
        default="nf4", metadata=about("weight quantization of the frozen base")
    )
    double_quant: bool = field(default=True, metadata=about("quantize the 4-bit quantization constants too"))
    precision: Literal["auto", "fp32", "fp16", "bf16"] = field(
        default="auto",
        metadata=about("compute precision; auto: bf16 on CUDA >= 8.0, fp16 below, fp32 on CPU"),
    )
    chat_template: str = field(
        default="llama2",
        metadata=about("llama2 | chatml | model (keep the tokenizer's) | path to a .jinja file"),
    )

    def __post_init__(self) -> None:
        if not self.name:
            raise UserError("recipe key model.name is required: a hub id, local folder, alias or run folder.")


@dataclass
class LoraSection:
    r: int = field(default=16, metadata=about("LoRA rank"))
    alpha: int = field(default=32, metadata=about("LoRA scaling numerator (scale = alpha / r)"))
    dropout: float = field(default=0.05, metadata=about("dropout on the LoRA input"))
    target_modules: str | list[str] = field(
        default="all-linear", metadata=about("modules given adapters: all-linear or a list of names")
    )

    def __post_init__(self) -> None:
        if self.r < 1:
            raise UserError(f"recipe key lora.r must be at least 1, got {self.r}.")
        if not 0 <= self.dropout < 1:
            raise UserError(f"recipe key lora.dropout must be in [0, 1), got {self.dropout}.")


@dataclass
class DataSource:
    """One source of a mixture: `data.train: [{path: a.jsonl, weight: 2}, {path: b.jsonl, max_rows: 500}]`."""

    path: str = field(default="", metadata=about("file, folder, glob, hub dataset id or builtin:NAME"))
    weight: float | None = field(
        default=None, metadata=about("its training rows times this: 2 takes each twice, 0.5 a seeded random half")
    )
    max_rows: int | None = field(default=None, metadata=about("read at most this many rows (a seeded random subset)"))

    def __post_init__(self) -> None:
        if not self.path:
            raise UserError("every data source needs a path: {path: FILE} with an optional weight or max_rows.")
        if self.weight is not None and self.max_rows is not None:
            raise UserError(f"data source {self.path}: give weight or max_rows, not both.")
        if self.weight is not None and self.weight <= 0:
            raise UserError(f"data source {self.path}: weight must be above 0, got {self.weight}.")
        if self.max_rows is not None and self.max_rows < 1:
            raise UserError(f"data source {self.path}: max_rows must be at least 1, got {self.max_rows}.")


Sources = str | list[str | DataSource]


def as_sources(spec: Sources | None) -> list[DataSource]:
    """A data key (one path, or a list of paths and {path, weight|max_rows}) as a list of sources."""
    if not spec:
        return []
    items = spec if isinstance(spec, list) else [spec]
    return [DataSource(item) if isinstance(item, str) else item for item in items]


@dataclass
class DataSection:
    train: Sources = field(
        default="",
        metadata=about("file, folder, glob, hub id or builtin:NAME; or a list of them and {path, weight|max_rows}"),
    )
    eval: Sources | None = field(default=None, metadata=about("held-out data, given like train"))
    eval_fraction: float | None = field(default=None, metadata=about("or hold out this fraction of train"))
    format: str = field(default="auto", metadata=about("auto, or a format name (see `posttrain data inspect`)"))
    max_length: int = field(default=1024, metadata=about("longest example in tokens"))
    on_too_long: Literal["drop", "truncate", "error"] = field(
        default="drop", metadata=about("what to do with longer examples; always reported with counts")
    )
    identical_pairs: Literal["drop", "error"] = field(
        default="drop", metadata=about("preference pairs whose chosen equals rejected; reported with counts")
    )
    cut_long_prompts: bool = field(
        default=True,
        metadata=about("preference pairs: cut a too-long prompt from the left (earliest turns first) first"),
    )
    text_blocks: bool = field(
        default=True,
        metadata=about("text rows: join documents with EOS and cut into max_length blocks (false: on_too_long)"),
    )
    documents: Literal["file", "section"] = field(
        default="file", metadata=about(".txt/.md files: one document per file, or per blank-line-separated section")
    )

    def __post_init__(self) -> None:
        if not self.train:
            raise UserError(
                "recipe key data.train is required: a file, folder, glob, hub dataset id or builtin:NAME, "
                "or a list of them."
            )
        if self.eval and self.eval_fraction:
            raise UserError("set data.eval or data.eval_fraction, not both.")
        if self.eval_fraction is not None and not 0 < self.eval_fraction < 1:
            raise UserError(
                f"data.eval_fraction must be above 0 and below 1, got {self.eval_fraction}; "
                "null (the default) holds nothing out."
            )
        if self.max_length < 8:
            raise UserError(f"data.max_length must be at least 8 tokens, got {self.max_length}.")
