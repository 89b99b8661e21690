"""Predicted peak GPU memory of a recipe, term by term, from the model's config alone (no weights, no GPU).

The weight terms follow bitsandbytes' storage exactly: 4-bit weights are packed two to a byte, with one
absmax per block of 64 (quantized again to one byte per block, plus one fp32 per 256 blocks, when
double_quant is on). The activation terms count the tensors autograd keeps for the backward pass of a Llama
decoder layer under QLoRA (checked against PyTorch's saved-tensor hooks on CPU); the logits terms assume the
loss upcasts to fp32. What the CUDA caching allocator adds on top is left to the headroom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

GIB = 1024**3
BLOCK, NESTED_BLOCK = 64, 256  # bitsandbytes' 4-bit block size, and that of the double-quantized absmax
LLAMA_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs from a Llama-architecture config.json."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool

    @classmethod
    def from_config(cls, config: dict) -> ModelShape:
        config = config.get("text_config", config)
        heads = config["num_attention_heads"]
        return cls(
            hidden=config["hidden_size"],
            intermediate=config["intermediate_size"],
            layers=config["num_hidden_layers"],
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab=config["vocab_size"],
            tied_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer of one decoder layer."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = ((h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h))
        return dict(zip(LLAMA_LINEARS, shapes, strict=True))

    def lora_targets(self, target_modules: str | list[str]) -> dict[str, tuple[int, int]]:
        if target_modules == "all-linear":
            return self.linears()
        wanted = [target_modules] if isinstance(target_modules, str) else target_modules
        return {name: shape for name, shape in self.linears().items() if name in wanted}


@dataclass(frozen=True)
class Precision:
    """Byte widths of a run: compute dtype, the residual stream, and whether dropout masks are bytes (CUDA)."""

    compute: int  # 2 for fp16/bf16, 4 for fp32
    residual: int  # 4 when the 4-bit base was prepared for training (fp32 embeddings and norms), else compute
    cuda: bool = True

    @classmethod
    def of(cls, precision: str, quantized_training: bool, cuda: bool = True) -> Precision:
        compute = 4 if precision == "fp32" else 2
        return cls(compute, 4 if quantized_training else compute, cuda)

    @property
    def mixed(self) -> bool:  # autocast makes compute-dtype copies of fp32 activations
        return self.compute != self.residual


# ---------------------------------------------------------------- weights and adapters


def quantized_linear_bytes(in_features: int, out_features: int, quantization: str, double_quant: bool) -> int:
    """One linear layer's weight as bitsandbytes stores it, quantization constants included."""
    numel = in_features * out_features
    if quantization == "int8":
        return numel + 4 * out_features  # int8 weight + one fp32 scale per row
    blocks = math.ceil(numel / BLOCK)
    code = 16 * 4  # the 16-value fp32 lookup table of nf4 / fp4
    # double_quant: absmax as uint8, its own fp32 absmax per 256 blocks, an fp32 offset and a 256-value code
    nested = blocks + 4 * math.ceil(blocks / NESTED_BLOCK) + 4 + 256 * 4
    constants = nested if double_quant else 4 * blocks
    return math.ceil(numel / 2) + code + constants


def base_weight_bytes(
    shape: ModelShape, quantization: str, double_quant: bool, dense_bytes: int, score_head: bool = False
) -> int:
    """The frozen base: decoder linears (quantized unless quantization is none), embeddings, norms and the
    LM head (or a reward model's one-output score head) in `dense_bytes` per value."""
    per_layer = 0
    for in_features, out_features in shape.linears().values():
        if quantization == "none":
            per_layer += in_features * out_features * dense_bytes
        else:
            per_layer += quantized_linear_bytes(in_features, out_features, quantization, double_quant)
    dense = shape.vocab * shape.hidden + (2 * shape.layers + 1) * shape.hidden
    if score_head:
        dense += shape.hidden
    elif not shape.tied_embeddings:
        dense += shape.vocab * shape.hidden
    rotary = 2 * (shape.head_dim // 2) * 4  # the fp32 inverse frequencies of RoPE, and their original copy
    return shape.layers * per_layer + dense * dense_bytes + rotary


def lora_parameters(shape: ModelShape, r: int, target_modules: str | list[str]) -> int:
    return shape.layers * sum(r * (i + o) for i, o in shape.lora_targets(target_modules).values())


def optimizer_bytes_per_parameter(optim: str) -> int:
    """AdamW keeps two fp32 moments; bitsandbytes' 8-bit optimizers keep two bytes; SGD keeps one moment."""
    if "8bit" in optim:
        return 2
    if optim.startswith("sgd"):
        return 4
    if optim.startswith("adafactor"):
        return 1  # factored second moment: a row and a column vector per matrix, far below one value each
    return 8


# ---------------------------------------------------------------- activations


def layer_activation_bytes(shape: ModelShape, r: int, targets: dict, p: Precision, dropout: bool) -> int:
    """Bytes autograd keeps per token for one decoder layer: the two RMSNorm inputs, the LoRA inputs (a
    dropout mask and the compute-dtype copy of each adapter's input), attention's q, k, v, output and
    log-sum-exp, and the MLP's gate, SiLU and up outputs. The frozen 4-bit matmuls keep nothing."""
    norms = 2 * p.residual * shape.hidden
    attention = (2 * shape.heads + 2 * shape.kv_heads) * shape.head_dim * p.compute + 4 * shape.heads
    mlp = 3 * p.residual * shape.intermediate
    lora = 0
    for in_features, _ in targets.values():
        mask = (1 if p.cuda else p.residual) * in_features if dropout else 0
        lora += mask + p.compute * in_features + p.compute * r
    if not dropout and not p.mixed:  # without dropout or autocast copies, an adapter keeps the very tensor it reads
        lora -= _shared_inputs(targets, shape) * p.compute
    return norms + attention + mlp + lora


def _shared_inputs(targets: dict, shape: ModelShape) -> int:
    """Values per token that adapters keep twice when they read the same tensor: q/k/v and gate/up read one
    normalised input, and o_proj reads attention's output, which attention keeps anyway."""
    groups = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
    shared = sum(max(0, sum(name in targets for name in group) - 1) * shape.hidden for group in groups)
    return shared + ("o_proj" in targets) * shape.heads * shape.head_dim


def logits_bytes_per_token(shape: ModelShape, p: Precision) -> int:
    """The LM head's logits in compute dtype, their fp32 upcast and log-softmax, and the logits' gradient."""
    return shape.vocab * (2 * p.compute + 4 + 4)


# ---------------------------------------------------------------- the estimate


@dataclass
class Term:
    name: str
    bytes: int
    note: str = ""


@dataclass
class Phase:
    """One part of a run (training, or PPO's generation / scoring / optimisation) and what it holds at its peak."""

    name: str
    terms: list[Term] = field(default_factory=list)

    def add(self, name: str, size: float, note: str = "") -> None:
        self.terms.append(Term(name, int(size), note))

    @property
    def total(self) -> int:
        return sum(t.bytes for t in self.terms)


@dataclass
class Estimate:
    phases: list[Phase]

    @property
    def peak(self) -> Phase:
        return max(self.phases, key=lambda phase: phase.total)

    @property
    def total(self) -> int:
        return self.peak.total


# ---------------------------------------------------------------- several GPUs


def sharded_linear_bytes(shape: ModelShape, quantization: str, dense_bytes: int) -> int:
    """One decoder layer's linear weights as FSDP shards them: the packed 4-bit values (two to a byte, whatever
    dtype they are packed in), or the dense weights. The quantization constants are not parameters: bitsandbytes
    keeps them on each layer, whole, on every GPU."""
    numels = [i * o for i, o in shape.linears().values()]
    if quantization in ("nf4", "fp4"):
        return sum(math.ceil(n / 2) for n in numels)
    return sum(numels) * (1 if quantization == "int8" else dense_bytes)


def shard(size: int, processes: int) -> int:
    """What one of `processes` GPUs holds of a sharded tensor: FSDP pads each tensor to a multiple of the count."""
    return math.ceil(size / processes)
