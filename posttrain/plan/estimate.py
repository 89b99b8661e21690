"""The predicted peak GPU memory of a recipe: each phase of the run (training; for PPO generation, scoring and
optimisation; for rs sampling then training; for GRPO generation then optimisation) as a sum of terms from
posttrain.plan.memory, read from the model's config without loading any weights. posttrain.plan.fit turns it into
a verdict for a GPU and advice."""

from __future__ import annotations

from dataclasses import dataclass, replace

from posttrain.methods import METHODS
from posttrain.methods.train_defaults import GRPO_TRAIN_DEFAULTS
from posttrain.models.configs import ModelSource, model_source
from posttrain.plan.memory import (
    GIB,
    Estimate,
    ModelShape,
    Phase,
    Precision,
    Term,
    base_weight_bytes,
    layer_activation_bytes,
    logits_bytes_per_token,
    lora_parameters,
    optimizer_bytes_per_parameter,
    shard,
    sharded_linear_bytes,
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
        names = section.reward_runs() if section else []
        return cls(policy, [model_source(name) for name in names if name])


def estimate(recipe: Recipe, models: Models, precision: str, cuda: bool = True) -> Estimate:
    """The phases of a run as the method table says to estimate it (posttrain.methods.METHODS, `plan`)."""
    how = METHODS[recipe.method].plan
    if how == "ppo":
        return Estimate(ppo_phases(recipe, models, precision, cuda))
    if how == "rs":
        return Estimate([rs_sampling(recipe, models, precision, cuda), training(recipe, models, precision, cuda)])
    if how == "grpo":
        return Estimate(grpo_phases(recipe, models, precision, cuda))
    if how == "generation":
        return Estimate([generation(recipe, models, precision, cuda), training(recipe, models, precision, cuda)])
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
    PPO makes two passes (policy and value) before its backward pass, three with PPO-ptx (the policy's on ptx
    answers)."""
    kept = {
        True: tokens * (passes * shape.layers * p.residual * shape.hidden + 2 * layer),
        False: passes * tokens * (shape.layers + 1) * layer,
    }
    other = f"{kept[not checkpointed] / GIB:.2f} GiB {'without' if checkpointed else 'with'} checkpointing"
    which = {1: "", 2: "policy and value passes, ", 3: "policy, value and ptx passes, "}[passes]
    phase.add("activations", kept[checkpointed], f"{which}{tokens} tokens; {other}")


def response_room(recipe: Recipe) -> int:
    """Tokens of data.max_length kept for sampled answers: ppo, rs and grpo sample, the others do not."""
    if METHODS[recipe.method].plan == "grpo":
        return recipe.train.get("max_completion_length", GRPO_TRAIN_DEFAULTS["max_completion_length"])
    return getattr(recipe, recipe.method).max_new_tokens if METHODS[recipe.method].data == "prompts" else 0


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
    phase = Phase({"training": "training", "grpo": "optimisation"}.get(method.plan, "fine-tuning"))
    _weights(phase, recipe, shape, p.residual, score_head=reward)
    r, targets = _adapter_r(recipe, models.policy)
    adapter = lora_parameters(shape, r, targets) + (shape.hidden if reward else 0)  # a reward run trains its head
    phase.add("LoRA weights", 4 * adapter, f"r={r}, fp32")
    if keeps_reference(recipe, models):
        phase.add("reference adapter", 4 * adapter, "frozen copy of the starting adapter")
    if method.plan == "grpo":
        _reward_adapters(phase, recipe, models)
    optim = train.get("optim", "adamw_torch_fused")
    phase.add("gradients + optimizer", adapter * (4 + optimizer_bytes_per_parameter(optim)), optim)
    sequences = 2 if method.data == "preference" else 1  # chosen and rejected
    batch = train.get("per_device_train_batch_size", 4)
    tokens = batch * sequences * recipe.data.max_length
    layer = layer_activation_bytes(shape, r, shape.lora_targets(targets), p, dropout=recipe.lora.dropout > 0)
    _activations(phase, shape, tokens, layer, p, trains_checkpointed(train))
    if not reward:
        # GRPO takes the log-probabilities of the completions only
        scored = batch * train["max_completion_length"] if method.plan == "grpo" else tokens
        phase.add("logits", scored * logits_bytes_per_token(shape, p), f"{scored} tokens x {shape.vocab} vocabulary")
        if p.mixed:
            phase.add("LM head cast", shape.vocab * shape.hidden * p.compute, "autocast copy of the fp32 LM head")
    return phase


def keeps_reference(recipe: Recipe, models: Models) -> bool:
    """A frozen copy of the starting adapter: dpo and kto always; grpo only with its KL term on (train.beta > 0)."""
    method = METHODS[recipe.method]
    if not method.reference_adapter or models.policy.lora is None:
        return False
    return method.plan != "grpo" or recipe.train.get("beta", 0.0) > 0


def _reward_adapters(phase: Phase, recipe: Recipe, models: Models) -> None:
    if models.rewards:
        shape = models.policy.shape
        rewards = sum(lora_parameters(shape, *_adapter_r(recipe, run)) + shape.hidden for run in models.rewards)
        phase.add(f"reward adapter{'s' if len(models.rewards) > 1 else ''}", 4 * rewards, "frozen, with score heads")


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
    ptx = s.ptx_coef > 0  # a mini-batch of ptx answers (at most data.max_length each) goes into the same backward
    _activations(optimisation, shape, tokens, layer, p, s.activation_checkpointing, passes=3 if ptx else 2)
    sequences = f"{s.mini_batch_size} sequence{'s' if s.mini_batch_size > 1 else ''}"
    minibatch_logits = tokens * logits_bytes_per_token(shape, p)
    if ptx:
        optimisation.add("logits", 2 * minibatch_logits, f"{sequences} x 2 (ptx)")
    else:
        optimisation.add("logits", minibatch_logits, sequences)
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


def grpo_phases(recipe: Recipe, models: Models, precision: str, cuda: bool = True) -> list[Phase]:
    """GRPO's two peaks: generating num_generations answers to each prompt of a generation batch (the KV cache),
    then optimising a micro-batch of them, as a TRL training run (posttrain.methods.grpo's defaults included)."""
    recipe = replace(recipe, train=GRPO_TRAIN_DEFAULTS | recipe.train)
    train, shape, length = recipe.train, models.policy.shape, recipe.data.max_length
    optimisation = training(recipe, models, precision, cuda)
    generation = Phase("generation")
    p = Precision.of(precision, recipe.model.quantization != "none", cuda)
    kept = ("base weights", "LoRA weights", "reference adapter", "reward adapter", "reward adapters")
    generation.terms = [term for term in optimisation.terms if term.name.startswith(kept)]
    r, targets = _adapter_r(recipe, models.policy)
    adapter = lora_parameters(shape, r, targets)
    optim = train.get("optim", "adamw_torch_fused")
    generation.add("optimizer states", adapter * optimizer_bytes_per_parameter(optim), f"{optim}, kept between steps")
    steps = train.get("steps_per_generation") or train.get("gradient_accumulation_steps", 1)
    sequences = train.get("generation_batch_size") or train["per_device_train_batch_size"] * steps
    answers = train["num_generations"]
    prompts = f"{sequences // answers} prompt{'s' * (sequences // answers != 1)}"
    note = f"{sequences} sequences ({prompts} x {answers} answers) x {length} tokens"
    generation.add("KV cache", _kv_cache(shape, sequences, length, p), note)
    return [generation, optimisation]


def generation(recipe: Recipe, models: Models, precision: str, cuda: bool = True) -> Phase:
    """gatt and distill build their data with the frozen policy (and reward run) before the SFT: a batch of
    sequences (gatt: K per dialogue at the last turn) as long as data.max_length in the KV cache."""
    s, shape, length = getattr(recipe, recipe.method), models.policy.shape, recipe.data.max_length
    p = Precision.of(precision, quantized_training=False, cuda=cuda)
    phase = Phase("generation")
    _weights(phase, recipe, shape, p.residual)
    _rl_adapters(phase, recipe, models, trainable=False)
    sequences = s.batch_size * getattr(s, "samples_per_dialogue", 1)
    phase.add("KV cache", _kv_cache(shape, sequences, length, p), f"{sequences} sequences x {length} tokens")
    return phase


# ---------------------------------------------------------------- one GPU of several


LAYOUTS = {  # what each accelerate preset splits across the GPUs (the rest every GPU holds whole)
    "ddp": "nothing split: the whole model, adapters and optimizer state on every GPU",
    "zero2": "gradients and optimizer state split",
    "zero3": "weights, adapters, gradients and optimizer state split",
    "fsdp": "weights, adapters, gradients and optimizer state split",
}
OPTIMIZER_TERMS = ("gradients + optimizer", "gradients", "AdamW states", "optimizer states")
ADAPTER_TERMS = ("LoRA weights", "reference adapter", "policy adapter", "reward adapter", "value adapter + head")


def per_gpu(result: Estimate, recipe: Recipe, models: Models, precision: str, processes: int, layout: str) -> Estimate:
    """The estimate for one of `processes` GPUs under an accelerate preset (LAYOUTS). Each GPU runs its own
    micro-batch, so activations, logits and KV caches stay as they are; what is split is divided by the count.
    DDP adds a bucket per GPU as large as the gradients (its all-reduce copies them there)."""
    phases = []
    for phase in result.phases:
        trains = any(term.name in OPTIMIZER_TERMS for term in phase.terms)
        spread = Phase(phase.name)
        for term in phase.terms:
            split = term.name in OPTIMIZER_TERMS and layout != "ddp"
            split = split or (term.name.startswith(ADAPTER_TERMS) and layout in ("zero3", "fsdp"))
            if term.name == "LM head cast" and layout in ("zero3", "fsdp"):
                continue  # sharded QLoRA keeps the LM head in the compute dtype: nothing to cast
            if term.name.startswith("base weights") and layout in ("zero3", "fsdp"):
                spread.terms += _sharded_base(term.name, recipe, models, precision, processes)
            elif split:
                spread.add(term.name, shard(term.bytes, processes), f"1/{processes} of {term.bytes / GIB:.2f} GiB")
            else:
                spread.terms.append(term)
        if layout == "ddp" and trains:
            trainable = sum(t.bytes for t in phase.terms if t.name in ("LoRA weights", "policy adapter"))
            trainable += sum(t.bytes for t in phase.terms if t.name == "value adapter + head")
            spread.add("DDP gradient buckets", trainable, "a copy of the fp32 gradients for the all-reduce")
        phases.append(spread)
    return Estimate(phases)


def _sharded_base(name: str, recipe: Recipe, models: Models, precision: str, processes: int) -> list[Term]:
    """The base under FSDP or ZeRO-3: the decoder's linear weights sharded, and two layers of them whole while they
    compute (one in use, the next prefetched); quantization constants, embeddings, norms and LM head whole on every
    GPU, in the compute dtype (sharded QLoRA skips the fp32 cast of embeddings and norms)."""
    m, shape = recipe.model, models.policy.shape
    compute = 4 if precision == "fp32" else 2
    whole = base_weight_bytes(shape, m.quantization, m.double_quant, compute, METHODS[recipe.method].score_head)
    layer = sharded_linear_bytes(shape, m.quantization, compute)
    sharded = shape.layers * layer
    return [
        Term(
            name,
            shard(sharded, processes) + whole - sharded,
            f"1/{processes} of the decoder's {sharded / GIB:.2f} "
            f"GiB of linear weights; constants, embeddings and norms whole, {compute * 8}-bit",
        ),
        Term("gathered layers", 2 * layer, "two decoder layers' linear weights whole: one computing, one prefetched"),
    ]
