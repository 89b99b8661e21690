"""What differs between the TRL and transformers versions pyproject admits, in one place: version-specific TRL
imports (trl 1.16: ORPO is experimental) and the names of TRL config fields."""

import dataclasses
import warnings

with warnings.catch_warnings():
    # Importing trl.experimental warns that its APIs may change; pinning trl <2 and importing it here is our answer.
    warnings.filterwarnings("ignore", message="You are importing from 'trl.experimental'")
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

__all__ = ["ORPOConfig", "ORPOTrainer", "config_arguments", "train_fields"]

# transformers 5.24 renamed TrainingArguments' gradient_checkpointing(_kwargs) to activation_checkpointing(_kwargs),
# keeping the old names as deprecated aliases. Recipes use the new names; older versions are given the old ones.
OLD_NAMES = {
    "activation_checkpointing": "gradient_checkpointing",
    "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs",
}


def train_fields(config_cls: type) -> dict[str, str]:
    """The `train:` keys a TRL config class takes, each mapped to the field it sets on this transformers version."""
    names = {f.name for f in dataclasses.fields(config_cls) if f.init}
    fields = {name: name for name in names}
    for new, old in OLD_NAMES.items():
        if new not in names and old in names:
            fields[new] = old
    return fields


def config_arguments(config_cls: type, train: dict) -> dict:
    """The recipe's `train:` values as keyword arguments of `config_cls` on this transformers version."""
    fields = train_fields(config_cls)
    return {fields.get(key, key): value for key, value in train.items()}
