"""The predicted peak GPU memory of a recipe: each phase of the run (training; for PPO generation, scoring and
optimisation; for rs sampling then training) as a sum of terms from posttrain.plan.memory, read from the model's config
without loading any weights. posttrain.plan.fit turns it into a verdict for a GPU and advice."""

from __future__ import annotations

from dataclasses import dataclass

from posttrain.methods import METHODS
from posttrain.models.configs import ModelSource, model_source
from posttrain.plan.memory import (
    GIB,
    Estimate,
    ModelShape,
    Phase,
    Precision,
    base_weight_bytes,
    layer_activation_bytes,
    logits_bytes_per_token,
    lora_parameters,
    optimizer_bytes_per_parameter,
)
from posttrain.recipe import Recipe


@dataclass(frozen=True)
class Models:
    """The model behind the recipe and its reward runs (ppo, rs), as far as the estimate needs them."""

    policy: ModelSource
    rewards: list[ModelSource]

    @classmethod
    def of(cls, recipe: Recipe) -> Models:
        policy = model_source(recipe.model.adapter or recipe.model.name)
        section = getattr(recipe, recipe.method) if METHODS[recipe.method].data == "prompts" else None
        spec = section.reward if section else {}
        names = list(spec.values()) if isinstance(spec, dict) else [spec]
        return cls(policy, [model_source(name) for name in names if name])


def estimate(recipe: Recipe, models: Models, precision: str, cuda: bool = True) -> Estimate:
    """The phases of a run as the method table says to estimate it (posttrain.methods.METHODS, `plan`)."""
    how = METHODS[recipe.method].plan
    if how == "ppo":
        return Estimate(ppo_phases(recipe, models, precision, cuda))
    if how == "rs":
        return Estimate([rs_sampling(recipe, models, precision, cuda), training(recipe, models, precision, cuda)])
    return Estimate([training(recipe, models, precision, cuda)])


def _adapter_r(recipe: Recipe, source: ModelSource) -> tuple[int, str | list[str]]:
    lora = source.lora if source.lora is not None else {}
    return lora.get("r", recipe.lora.r), lora.get("target_modules", recipe.lora.target_modules)


def _weights(phase: Phase, recipe: Recipe, shape: ModelShape, dense_bytes: int, score_head: bool = False) -> None:
    m = recipe.model
    quant = "4-bit" if m.quantization in ("nf4", "fp4") else m.quantization
    note = f"{m.quantization}" + (", double-quant constants" if m.double_quant and quant == "4-bit" else "")
    weights = base_weight_bytes(shape, m.quantization, m.double_quant, dense_bytes, score_head)
    phase.add(f"base weights ({quant})", weights, f"{note}; embeddings and norms in {dense_bytes * 8}-bit")


def _activations(
    phase: Phase, shape: ModelShape, tokens: int, layer: int, p: Precision, checkpointed: bool, passes: int = 1
) -> None:
    """Checkpointed, each layer keeps only its input and one layer is recomputed (with its gradients) at a time.
    PPO makes two passes (policy and value) before its backward pass."""
    kept = {
        True: tokens * (passes * shape.layers * p.residual * shape.hidden + 2 * layer),
        False: passes * tokens * (shape.layers + 1) * layer,
    }
    other = f"{kept[not checkpointed] / GIB:.2f} GiB {'without' if checkpointed else 'with'} checkpointing"
    which = "policy and value passes, " if passes == 2 else ""
    phase.add("activations", kept[checkpointed], f"{which}{tokens} tokens; {other}")


def trains_checkpointed(train: dict) -> bool:
    """Whether a TRL run recomputes activations: TRL's default is on; `auto` (posttrain's) counts as on until a run
    or `posttrain plan` settles it for its device."""
    value = train.get("activation_checkpointing", train.get("gradient_checkpointing", True))
    return value == "auto" or bool(value)


def training(recipe: Recipe, models: Models, precision: str, cuda: bool = True) -> Phase:
    """A TRL training run (sft, reward, dpo, orpo; rs's fine-tuning): weights, adapters, gradients, optimizer
    states, activations and logits of one micro-batch."""
    shape, train, method = models.policy.shape, recipe.train, METHODS[recipe.method]
    quantized = recipe.model.quantization != "none"
    p = Precision.of(precision, quantized, cuda)
    reward = method.score_head
    phase = Phase("training" if method.plan == "training" else "fine-tuning")
    _weights(phase, recipe, shape, p.residual, score_head=reward)
    r, targets = _adapter_r(recipe, models.policy)
    adapter = lora_parameters(shape, r, targets) + (shape.hidden if reward else 0)  # a reward run trains its head
    phase.add("LoRA weights", 4 * adapter, f"r={r}, fp32")
    if method.reference_adapter and models.policy.lora is not None:
        phase.add("reference adapter", 4 * adapter, "frozen copy of the starting adapter")
    optim = train.get("optim", "adamw_torch_fused")
    phase.add("gradients + optimizer", adapter * (4 + optimizer_bytes_per_parameter(optim)), optim)
    sequences = 2 if method.data == "preference" else 1  # chosen and rejected
    batch = train.get("per_device_train_batch_size", 4)
    tokens = batch * sequences * recipe.data.max_length
    layer = layer_activation_bytes(shape, r, shape.lora_targets(targets), p, dropout=recipe.lora.dropout > 0)
    _activations(phase, shape, tokens, layer, p, trains_checkpointed(train))
    if not reward:
        phase.add("logits", tokens * logits_bytes_per_token(shape, p), f"{tokens} tokens x {shape.vocab} vocabulary")
        if p.mixed:
            phase.add("LM head cast", shape.vocab * shape.hidden * p.compute, "autocast copy of the fp32 LM head")
    return phase


def _rl_adapters(phase: Phase, recipe: Recipe, models: Models, trainable: bool) -> int:
    """Policy (and reference, value) plus reward adapters on the shared base; returns the trainable count."""
    shape = models.policy.shape
    policy = lora_parameters(shape, *_adapter_r(recipe, models.policy))
    phase.add("policy adapter", 4 * policy)
    rewards = sum(lora_parameters(shape, *_adapter_r(recipe, run)) + shape.hidden for run in models.rewards)
    phase.add(f"reward adapter{'s' if len(models.rewards) > 1 else ''}", 4 * rewards, "frozen, with score heads")
    if not trainable:
        return 0
    if models.policy.lora is not None:
        phase.add("reference adapter", 4 * policy, "frozen copy of the SFT adapter")
    value = lora_parameters(shape, *_adapter_r(recipe, models.rewards[0])) + shape.hidden
    phase.add("value adapter + head", 4 * value, "starts as the reward run")
    phase.add("AdamW states", 8 * (policy + value), "policy and value, fp32")
    return policy + value


def _kv_cache(shape: ModelShape, sequences: int, length: int, p: Precision) -> int:
    return sequences * length * shape.layers * 2 * shape.kv_heads * shape.head_dim * p.residual


def ppo_phases(recipe: Recipe, models: Models, precision: str, cuda: bool = True) -> list[Phase]:
    """PPO's three peaks: generating a rollout batch, scoring it (policy and reference logits at once), and
    optimising one mini-batch through the policy and the value network."""
    s, shape, length = recipe.ppo, models.policy.shape, recipe.data.max_length
    p = Precision.of(precision, recipe.model.quantization != "none", cuda)
    phases = []
    for name in ("generation", "scoring", "optimisation"):
        phase = Phase(name)
        _weights(phase, recipe, shape, p.residual)
        trainable = _rl_adapters(phase, recipe, models, trainable=True)
        phases.append(phase)
    generation, scoring, optimisation = phases
    kv = _kv_cache(shape, s.batch_size, length, p)
    generation.add("KV cache", kv, f"{s.batch_size} sequences x {length} tokens")
    logits = 2 * s.batch_size * length * shape.vocab * p.compute + 2 * s.batch_size * s.max_new_tokens * shape.vocab * 4
    scoring.add("logits", logits, "policy and reference over the rollout batch, fp32 log-probs of the responses")
    optimisation.add("gradients", 4 * trainable)
    r, targets = _adapter_r(recipe, models.policy)
    tokens = s.mini_batch_size * length
    layer = layer_activation_bytes(shape, r, shape.lora_targets(targets), p, dropout=False)  # eval mode
    _activations(optimisation, shape, tokens, layer, p, s.activation_checkpointing, passes=2)
    sequences = f"{s.mini_batch_size} sequence{'s' if s.mini_batch_size > 1 else ''}"
    optimisation.add("logits", tokens * logits_bytes_per_token(shape, p), sequences)
    if p.mixed:
        optimisation.add("LM head cast", shape.vocab * shape.hidden * p.compute, "autocast copy of the fp32 LM head")
    return phases


def rs_sampling(recipe: Recipe, models: Models, precision: str, cuda: bool = True) -> Phase:
    s, shape, length = recipe.rs, models.policy.shape, recipe.data.max_length
    p = Precision.of(precision, quantized_training=False, cuda=cuda)  # sampling loads the base as it is stored
    phase = Phase("sampling")
    _weights(phase, recipe, shape, p.residual)
    _rl_adapters(phase, recipe, models, trainable=False)
    sequences = s.batch_size * s.samples_per_prompt
    phase.add("KV cache", _kv_cache(shape, sequences, length, p), f"{sequences} sequences x {length} tokens")
    return phase
