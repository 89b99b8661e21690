"""Shared fixtures: a private model cache, no hub access, and small recipes on tiny-llama2."""

import os
import tempfile
from pathlib import Path

import pytest
import yaml

# No test may reach the Hugging Face hub; offline mode makes such a call fail at once instead of timing out.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
# Built-in models are materialised once per test session (or into POSTTRAIN_CACHE, if the caller set one).
os.environ.setdefault("POSTTRAIN_CACHE", tempfile.mkdtemp(prefix="posttrain-cache-"))


@pytest.fixture(scope="session", autouse=True)
def quiet():
    from posttrain.cli import quiet_libraries

    quiet_libraries()


@pytest.fixture(scope="session")
def tiny_model():
    from posttrain.models.loading import resolve_model

    return resolve_model("tiny-llama2")


@pytest.fixture
def write_recipe(tmp_path):
    """Write a small SFT recipe on tiny-llama2 (keys overridable) and return its path."""

    def write(name: str = "recipe.yaml", **sections) -> Path:
        recipe = {
            "method": "sft",
            "model": {"name": "tiny-llama2", "quantization": "none"},
            "data": {"train": "builtin:pirate_sft", "max_length": 192},
            "train": {
                "max_steps": 2,
                "per_device_train_batch_size": 2,
                "logging_steps": 1,
                "activation_checkpointing": False,
                "report_to": "none",
            },
            "output_dir": str(tmp_path / "run"),
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(recipe.get(key), dict):
                recipe[key] = recipe[key] | value
            else:
                recipe[key] = value
        path = tmp_path / name
        path.write_text("# posttrain sft " + name + "\n" + yaml.safe_dump(recipe), encoding="utf-8")
        return path

    return write


@pytest.fixture
def jsonl(tmp_path):
    """Write rows to a .jsonl file and return its path."""
    import json

    def write(rows, name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        return path

    return write
