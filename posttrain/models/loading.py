"""MODEL -> weights: an alias, a local folder, a run folder (base + adapter) or a hub id; 4-bit base + LoRA."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from posttrain.errors import UserError
from posttrain.models.aliases import materialise_alias
from posttrain.models.templates import prepare_tokenizer


@dataclass(frozen=True)
class ModelRef:
    """Where a model's pieces live once MODEL has been resolved."""

    name: str  # what the user wrote, resolved to a base: alias, hub id or absolute folder
    base: str  # hub id or local folder holding the base weights
    tokenizer: str  # a run folder keeps its own tokenizer and chat template
    adapter: Path | None = None  # the LoRA adapter of a run folder

    @property
    def is_run(self) -> bool:
        return self.adapter is not None


def resolve_model(name: str) -> ModelRef:
    """Find MODEL without loading weights. Errors name the path and what was expected there."""
    alias_folder = materialise_alias(name)
    if alias_folder is not None:
        return ModelRef(name, str(alias_folder), str(alias_folder))
    path = Path(name).expanduser()
    if path.is_file():
        raise UserError(
            f"{name} is a file, not a model: give a model folder, a run folder, a hub id or an alias "
            "(tiny-llama2, smollm2-135m)."
        )
    if path.is_dir():
        path = path.resolve()
        if (path / "recipe.yaml").is_file():
            return _resolve_run(path)
        if (path / "config.json").is_file():
            return ModelRef(str(path), str(path), str(path))
        raise UserError(f"{name} is neither a model folder (no config.json) nor a posttrain run (no recipe.yaml).")
    if looks_like_path(name):
        raise MissingModelPath(name)
    check_hub_reachable(name)
    return ModelRef(name, name, name)  # a hub id: access rights are checked when its tokenizer is fetched


# A hub id is NAME or OWNER/NAME of letters, digits, '-', '_' and '.'; anything else MODEL names is a path.
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def looks_like_path(name: str) -> bool:
    """True when a MODEL that is not on disk was meant as a path: runs/..., ./..., /..., ~..., more than one '/',
    characters no hub id has, or a bare file name (model.gguf)."""
    bare_file = "/" not in name and bool(Path(name).suffix)
    return name.startswith(("runs/", ".", "/", "~")) or not HUB_ID.fullmatch(name) or bare_file


class MissingModelPath(UserError):
    """MODEL names a path that does not exist; the message says which shipped recipe writes it, if one does."""

    def __init__(self, name: str):
        self.what = f"model path not found: {name} (no such folder)."
        self.writer = shipped_run_command(name)
        if self.writer:
            fix = f"It is the run folder `{self.writer}` writes: run that first."
        else:
            fix = "Check the path, or give a hub id or an alias (tiny-llama2, smollm2-135m)."
        super().__init__(f"{self.what} {fix}")


def shipped_run_command(name: str) -> str | None:
    """The command of the shipped recipe whose output_dir is `name` (`posttrain sft smollm2-135m/sft`), if any."""
    from posttrain.recipe import shipped_recipes  # the recipes name the run folders they write

    wanted = Path(name).expanduser().resolve()
    for recipe_name, path in shipped_recipes().items():
        recipe = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if recipe.get("output_dir") and Path(recipe["output_dir"]).resolve() == wanted:
            return f"posttrain {recipe.get('method')} {recipe_name}"
    return None


def _resolve_run(run: Path) -> ModelRef:
    if not (run / "adapter").is_dir():
        raise UserError(
            f"{run} is a run folder without a finished adapter (training did not complete). "
            "Finish it with --resume, or name another run."
        )
    record = read_run_record(run)
    base_name = record.get("base_model") or (record.get("model") or {}).get("name")
    if not base_name:
        raise UserError(f"{run}/recipe.yaml does not say which base model the run was trained on.")
    try:
        base = resolve_model(base_name)
    except UserError as err:
        raise UserError(
            f"{run} was trained on the base model {base_name}, which cannot be found: {err} "
            f"Put the base back there, or set base_model in {run / 'recipe.yaml'} to where it is now."
        ) from None
    return ModelRef(base.name, base.base, str(run), adapter=run / "adapter")


def read_run_record(run: Path) -> dict:
    """A run folder's recipe.yaml: its resolved recipe, base model and library versions."""
    return yaml.safe_load((run / "recipe.yaml").read_text(encoding="utf-8")) or {}


def method_of_run(run: Path) -> str | None:
    """The method that produced a run folder (sft, reward, ...)."""
    return read_run_record(run).get("method")


# ---------------------------------------------------------------- hub access


def _unreachable(name: str) -> UserError:
    return UserError(
        f"cannot load {name}: it is not a local folder and the Hugging Face hub cannot be reached "
        "(offline?). Connect and retry, or use a local folder or an alias (tiny-llama2, smollm2-135m)."
    )


def check_hub_reachable(name: str) -> None:
    """Fail at once when the hub cannot be reached and the model is not in the local hub cache."""
    from huggingface_hub import constants, try_to_load_from_cache

    from posttrain.models.hub import hub_resolves

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if not (constants.HF_HUB_OFFLINE or cached or hub_resolves()):
        raise _unreachable(name)


@contextlib.contextmanager
def hub_errors(name: str):
    """Turn the hub's failures (offline, gated, missing) into messages that say what to do."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        yield
    except GatedRepoError:
        raise UserError(
            f"{name} is gated: accept its licence on huggingface.co/{name}, then log in with "
            "`huggingface-cli login` or set HF_TOKEN."
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"{name} is not a local folder, and the hub has no such model (or it is private: log "
            "in with `huggingface-cli login` or set HF_TOKEN)."
        ) from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        if "401" in str(err) or "403" in str(err) or "gated" in str(err).lower():
            raise UserError(f"{name} needs a Hugging Face token: `huggingface-cli login` or set HF_TOKEN.") from None
        raise _unreachable(name) from None


# ---------------------------------------------------------------- loading


def load_tokenizer(ref: ModelRef, chat_template: str):
    from transformers import AutoTokenizer

    with hub_errors(ref.tokenizer):
        tokenizer = AutoTokenizer.from_pretrained(ref.tokenizer)
    # A run folder already carries the template it was trained with.
    return prepare_tokenizer(tokenizer, "model" if ref.is_run else chat_template)


def load_base_model(ref: ModelRef, quantization: str, double_quant: bool, precision: str, task_type: str = "CAUSAL_LM"):
    """The frozen base, quantized with bitsandbytes unless quantization is none, with sdpa attention.

    task_type SEQ_CLS gives the base a one-output score head (a reward model); the head is never quantized.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from posttrain.precision import torch_dtype

    dtype = torch_dtype(precision)
    kwargs = {"dtype": dtype, "attn_implementation": "sdpa"}
    auto_class = AutoModelForCausalLM
    if task_type == "SEQ_CLS":
        auto_class, kwargs["num_labels"] = AutoModelForSequenceClassification, 1
    sharded = weights_are_sharded()
    if quantization != "none":
        storage = dtype if sharded else None
        kwargs["quantization_config"] = quantization_config(quantization, double_quant, dtype, task_type, storage)
    if not sharded and (quantization != "none" or torch.cuda.is_available()):
        kwargs["device_map"] = {"": _device()}  # FSDP and ZeRO-3 place the shards themselves
    with hub_errors(ref.base):
        model = auto_class.from_pretrained(ref.base, **kwargs)
    keep_4bit_layout_on_cpu(model)
    return model


def keep_4bit_layout_on_cpu(model) -> None:
    """bitsandbytes (0.49+) repacks a 4-bit layer's weights for its CPU inference kernel on the first forward pass
    in eval mode without gradients, and afterwards no gradient flows through that layer to its input: training
    after any generation (PPO's rollouts, an evaluation, the quickstart's "before" answers) silently loses the
    gradients of every earlier layer. posttrain switches the repacking off; it only speeds up CPU inference."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def quantization_config(quantization: str, double_quant: bool, dtype, task_type: str = "CAUSAL_LM", storage=None):
    """bitsandbytes settings; `storage` is the dtype the 4-bit weights are packed in (uint8 unless sharded)."""
    from transformers import BitsAndBytesConfig

    keep = ["score"] if task_type == "SEQ_CLS" else None  # the reward head stays in full precision
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=keep)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quantization,
        bnb_4bit_use_double_quant=double_quant,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=storage,
        llm_int8_skip_modules=keep,
    )


def weights_are_sharded() -> bool:
    """True when accelerate launched this process under FSDP or DeepSpeed ZeRO-3, which shard the base's weights.

    FSDP-QLoRA and ZeRO-3 QLoRA (PEFT's guides) need the 4-bit weights packed in the same dtype as the rest of the
    model (bnb_4bit_quant_storage), so they can be flattened and sharded with it, and no device_map.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return True
    return os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3" or is_deepspeed_zero3_enabled()


def _device() -> str:
    import torch
    from accelerate import PartialState

    return f"cuda:{PartialState().local_process_index}" if torch.cuda.is_available() else "cpu"


def add_lora(model, lora, adapter: Path | None, task_type: str = "CAUSAL_LM"):
    """Wrap the base in a trainable LoRA adapter: a new one from the recipe, or an earlier run's to continue."""
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if getattr(model, "hf_quantizer", None) is not None and not weights_are_sharded():
        # Casts norms and embeddings to fp32 for stable fp16 training; checkpointing is TRL's to switch on. Sharded
        # weights must keep one dtype per layer, so FSDP and ZeRO-3 skip the cast (as TRL does for sharded QLoRA).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if adapter is not None:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=True)
    return get_peft_model(model, lora_config(lora, task_type))


def lora_config(lora, task_type: str = "CAUSAL_LM"):
    """peft's LoraConfig of a recipe's lora: section."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
        modules_to_save=["score"] if task_type == "SEQ_CLS" else None,  # the reward head trains in full
    )


def load_inference_tokenizer(name: str, chat_template: str = "auto", task_type: str = "CAUSAL_LM"):
    """(ref, tokenizer) of MODEL for inference: a run keeps its own template; a plain model takes `chat_template`
    (auto: the template it ships with, else Llama 2's). A reward run cannot stand in for a language model."""
    ref = resolve_model(name)
    if task_type == "CAUSAL_LM" and ref.is_run and method_of_run(ref.adapter.parent) == "reward":
        raise UserError(
            f"{name} is a reward run: it scores replies (a score head) and cannot write them. Name a language-model "
            "run (sft, dpo, orpo, ...) or a model; a reward run serves `posttrain eval accuracy` and `--judge`."
        )
    return ref, load_tokenizer(ref, chat_template)


def load_run_model(name: str, task_type: str = "CAUSAL_LM", quantization: str | None = None, chat_template="auto"):
    """(model, tokenizer) for inference from MODEL: a run folder's base with its adapter, or a plain model.

    A run is reloaded as it was trained (its recipe's quantization) unless `quantization` says otherwise.
    """
    from peft import PeftModel

    from posttrain.precision import choose_precision, detect_hardware

    ref, tokenizer = load_inference_tokenizer(name, chat_template, task_type)
    record = read_run_record(ref.adapter.parent) if ref.is_run else {}
    spec = record.get("model") or {}
    quantization = quantization or spec.get("quantization", "none")
    precision = choose_precision("auto", detect_hardware())
    model = load_base_model(ref, quantization, spec.get("double_quant", True), precision, task_type)
    model.config.pad_token_id = tokenizer.pad_token_id
    if ref.is_run:
        model = PeftModel.from_pretrained(model, str(ref.adapter))
    return model.eval(), tokenizer


def context_length(ref: ModelRef) -> int:
    """How many tokens (prompt and reply together) the model takes, from its config; no weights are loaded."""
    from transformers import AutoConfig

    with hub_errors(ref.base):
        config = AutoConfig.from_pretrained(ref.base)
    return int(getattr(config, "max_position_embeddings", None) or 2048)


def require_reward_run(name: str, option: str) -> ModelRef:
    """A reward run (score head, no language-model head); anything else is a user error naming `option`."""
    ref = resolve_model(name)
    method = method_of_run(ref.adapter.parent) if ref.is_run else None
    if method != "reward":
        trained = f"was trained by `posttrain {method}`" if ref.is_run else "is not a posttrain run"
        raise UserError(
            f"{option}: {name} {trained}; it needs a reward run. Train one with `posttrain reward RECIPE` "
            "and name its run folder."
        )
    return ref
