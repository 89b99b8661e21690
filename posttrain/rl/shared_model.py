"""One (4-bit) base model carrying every network PPO needs, as LoRA adapters switched in turn:

  policy     trainable, starts as the SFT adapter (a fresh LoRA when there is none)
  reference  frozen copy of the SFT adapter (no adapter at all when there is none)
  value      trainable, starts as the reward adapter, with a scalar head starting as the reward head
  reward:*   frozen reward run(s), each with its score head

A reward run was trained as a sequence classifier; its LoRA weights live on the same transformer layers as the
causal LM's, so they load onto this base unchanged and its score head becomes a separate linear layer.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

POLICY, REFERENCE, VALUE = "policy", "reference", "value"


def reward_adapter_name(role: str) -> str:
    return f"reward_{role}"


def _load_lora_onto(model, adapter_dir: Path, name: str, trainable: bool) -> torch.Tensor | None:
    """Add the adapter saved in `adapter_dir` under `name`; return its score-head weight, if it has one."""
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file

    config = LoraConfig.from_pretrained(str(adapter_dir))
    config.task_type, config.modules_to_save, config.inference_mode = "CAUSAL_LM", None, not trainable
    model.add_adapter(name, config)
    state = load_file(str(adapter_dir / "adapter_model.safetensors"))
    score = next((v for k, v in state.items() if k.endswith("score.weight")), None)
    set_peft_model_state_dict(model, {k: v for k, v in state.items() if "lora_" in k}, adapter_name=name)
    _check_adapter_keys(model, state, name, adapter_dir)
    return score


def _check_adapter_keys(model, saved: dict, name: str, adapter_dir: Path) -> None:
    """PEFT loads adapter weights leniently (strict=False) and only warns; here a LoRA weight the file lacks (it
    would stay at its initial value) or one the model has no place for (it would be dropped) is an error."""
    from peft import get_peft_model_state_dict

    from posttrain.errors import UserError

    expected = {k for k in get_peft_model_state_dict(model, adapter_name=name) if "lora_" in k}
    found = {k for k in saved if "lora_" in k}
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        parts = [
            f"{len(keys)} {what} (first: {keys[0]})"
            for what, keys in (("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise UserError(
            f"{adapter_dir}: the adapter's LoRA weights do not match the model: {'; '.join(parts)}. The file is "
            "damaged or belongs to another model or LoRA configuration; retrain that run or restore its adapter/."
        )


class SharedModel(nn.Module):
    """The PPO networks over one base. forward() gives the policy's logits and the value estimates together,
    so a distributed wrapper (accelerate) sees one forward and one backward per optimisation step."""

    def __init__(self, peft_model, value_head: nn.Linear | None, reward_heads: dict[str, nn.Linear], has_reference):
        super().__init__()
        self.peft = peft_model
        self.value_head = value_head  # None when only sampling (rejection sampling trains nothing here)
        self.reward_heads = nn.ModuleDict(reward_heads)
        self.has_reference = has_reference
        self.checkpointed_layers: list[nn.Module] = []

    @classmethod
    def build(cls, base, lora_config, sft_adapter: Path | None, reward_adapters: dict[str, Path]) -> SharedModel:
        """Everything PPO trains and consults."""
        peft_model = _policy(base, lora_config, sft_adapter)
        if sft_adapter is not None:
            _load_lora_onto(peft_model, sft_adapter, REFERENCE, trainable=False)
        reward_heads = _reward_heads(peft_model, reward_adapters)
        # The value network starts as the (first) reward model, as in InstructGPT.
        first_role, first_path = next(iter(reward_adapters.items()))
        score = _load_lora_onto(peft_model, first_path, VALUE, trainable=True)
        value_head = _linear(score, base.config.hidden_size, base.device, trainable=True)
        model = cls(peft_model, value_head, reward_heads, has_reference=sft_adapter is not None)
        model.freeze_all_but_policy_and_value()
        return model

    @classmethod
    def for_sampling(cls, base, lora_config, policy_adapter: Path | None, reward_adapters: dict[str, Path]):
        """Only the policy (frozen) and the reward runs: what rejection sampling needs to sample and score."""
        peft_model = _policy(base, lora_config, policy_adapter)
        model = cls(peft_model, None, _reward_heads(peft_model, reward_adapters), has_reference=False)
        model.freeze_all_but_policy_and_value()
        return model

    # ------------------------------------------------------------ adapters

    def freeze_all_but_policy_and_value(self) -> None:
        """Only the policy and value networks train, and only in PPO (a sampling-only model trains nothing)."""
        trains = self.value_head is not None
        for name, param in self.named_parameters():
            param.requires_grad = trains and _is_trainable_name(name)

    @contextlib.contextmanager
    def adapter(self, name: str | None):
        """Run with one adapter active (None: the bare base). PEFT's switch also flips requires_grad, so the
        trainable set is restored afterwards."""
        peft = self.peft
        previous = peft.base_model.active_adapter  # set_adapter below leaves the PeftModel's own record as it was
        try:
            if name is None:
                with peft.disable_adapter():
                    yield
            else:
                peft.base_model.set_adapter(name)
                yield
        finally:
            peft.base_model.set_adapter(previous)
            self.freeze_all_but_policy_and_value()

    # ------------------------------------------------------------ activation checkpointing

    def checkpoint_layers(self) -> None:
        """Keep only each decoder layer's input in the policy and value passes and recompute the layer in the
        backward pass. transformers' own switch cannot be used as it is: it recomputes a layer under whichever
        adapter is active during the backward pass, which for one of the two passes is the wrong one."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        self.checkpointed_layers = [m for m in self.peft.modules() if isinstance(m, GradientCheckpointingLayer)]
        for layer in self.checkpointed_layers:
            layer.gradient_checkpointing = True
            layer._gradient_checkpointing_func = self._checkpoint
        self.train(self.training)

    def _checkpoint(self, layer_forward, *inputs):
        name = self.peft.base_model.active_adapter

        def under_the_same_adapter(*inputs):
            if self.peft.base_model.active_adapter == name:  # always in the forward pass
                return layer_forward(*inputs)
            with self.adapter(name):
                return layer_forward(*inputs)

        return checkpoint(under_the_same_adapter, *inputs, use_reentrant=False)

    def train(self, mode: bool = True) -> SharedModel:
        """PPO runs in eval mode (no dropout); transformers checkpoints a layer only in training mode, so the
        checkpointed layers alone stay in it (a decoder layer has no dropout of its own; its modules follow mode)."""
        super().train(mode)
        for layer in self.checkpointed_layers:
            layer.training = True
        return self

    # ------------------------------------------------------------ networks

    # Sequences are left-padded queries followed by responses, so positions come from the attention mask. Only
    # generate() needs a KV cache.

    def _last_hidden(self, batch: dict) -> torch.Tensor:
        backbone = self.peft.base_model.model.model  # the transformer, without the LM head
        return backbone(**batch, use_cache=False).last_hidden_state

    def forward(self, input_ids, attention_mask, position_ids, with_values: bool = True):
        """(policy logits, value per token) for a batch of query+response sequences; (logits, None) without
        `with_values` (PPO-ptx needs the policy alone: no second pass through the backbone)."""
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}
        with self.adapter(POLICY):
            logits = self.peft(**batch, use_cache=False).logits
        if not with_values:
            return logits, None
        with self.adapter(VALUE):
            values = self.value_head(self._last_hidden(batch).float()).squeeze(-1)
        return logits, values

    @torch.no_grad()
    def reference_logits(self, batch: dict) -> torch.Tensor:
        with self.adapter(REFERENCE if self.has_reference else None):
            return self.peft(**batch, use_cache=False).logits

    @torch.no_grad()
    def scores(self, role: str, batch: dict, last_index: torch.Tensor) -> torch.Tensor:
        """The reward run's score of each sequence, read at its last real token."""
        with self.adapter(reward_adapter_name(role)):
            hidden = self._last_hidden(batch).float()
        rows = torch.arange(len(last_index), device=hidden.device)
        return self.reward_heads[role](hidden[rows, last_index]).squeeze(-1)

    def generate(self, **kwargs):
        """The policy's generate(), checkpointed layers switched off: transformers before 5.24 drops the KV cache
        of a checkpointed layer in training mode even without gradients, so each new token would attend to
        itself alone."""
        with self.adapter(POLICY), torch.no_grad():
            for layer in self.checkpointed_layers:
                layer.gradient_checkpointing = False
            try:
                return self.peft.generate(**kwargs)
            finally:
                for layer in self.checkpointed_layers:
                    layer.gradient_checkpointing = True


def _policy(base, lora_config, adapter: Path | None):
    """A PEFT model whose `policy` adapter starts as `adapter` (a fresh LoRA when there is none)."""
    from peft import PeftModel, get_peft_model
    from safetensors.torch import load_file

    if adapter is None:
        return get_peft_model(base, lora_config, adapter_name=POLICY)
    model = PeftModel.from_pretrained(base, str(adapter), adapter_name=POLICY, is_trainable=True)
    _check_adapter_keys(model, load_file(str(adapter / "adapter_model.safetensors")), POLICY, adapter)
    return model


def _reward_heads(peft_model, reward_adapters: dict[str, Path]) -> dict[str, nn.Linear]:
    """Load each reward run's LoRA as a frozen adapter; return its score head as a linear layer."""
    hidden, device = peft_model.config.hidden_size, peft_model.device
    return {
        role: _linear(_load_lora_onto(peft_model, path, reward_adapter_name(role), trainable=False), hidden, device)
        for role, path in reward_adapters.items()
    }


def _is_trainable_name(name: str) -> bool:
    return f".{POLICY}." in name or f".{VALUE}." in name or name.startswith("value_head.")


def _linear(weight: torch.Tensor, hidden: int, device, trainable: bool = False) -> nn.Linear:
    layer = nn.Linear(hidden, 1, bias=False, device=device)
    with torch.no_grad():
        layer.weight.copy_(weight.reshape(1, hidden).float())
    layer.weight.requires_grad = trainable
    return layer
