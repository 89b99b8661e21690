"""A recipe's model config without downloading weights: shipped configs of the Llama 2 sizes (so `posttrain plan`
works offline), run folders (their base model and adapter), runs a shipped recipe will write, local folders,
the built-in aliases, and the hub's config.json as a last resort."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from posttrain.errors import UserError
from posttrain.plan.memory import ModelShape

SHIPPED_CONFIGS = Path(__file__).parent / "configs"
# Hub ids (any owner, base or chat) whose config ships with posttrain.
KNOWN_MODELS = {
    r"llama-2-7b": "llama-2-7b.json",
    r"llama-2-13b": "llama-2-13b.json",
    r"smollm2-135m": "smollm2-135m.json",
}


@dataclass(frozen=True)
class ModelSource:
    """The base model behind MODEL, and the LoRA settings of the adapter a run folder carries (if any)."""

    base: str
    shape: ModelShape
    lora: dict | None = None  # {r, target_modules, ...} of an earlier run's adapter


def model_source(name: str) -> ModelSource:
    """Shape of MODEL's base model, following run folders (existing or to be written by a shipped recipe)."""
    run = _run_record(name)
    if run is not None:
        base = run.get("base_model") or (run.get("model") or {}).get("name")
        if not base:
            raise UserError(f"{name}/recipe.yaml does not say which base model the run was trained on.")
        return ModelSource(base, model_source(base).shape, run.get("lora") or {})
    return ModelSource(name, ModelShape.from_config(_config(name)))


def _run_record(name: str) -> dict | None:
    """The recipe of a run folder, or of the shipped recipe whose output_dir is `name` (not trained yet)."""
    from posttrain.recipe import read_yaml, shipped_recipes

    path = Path(name).expanduser()
    if (path / "recipe.yaml").is_file():
        return read_yaml(path / "recipe.yaml")
    wanted = path.as_posix().rstrip("/")
    for recipe in shipped_recipes().values():
        data = read_yaml(recipe)
        if str(data.get("output_dir", "")).rstrip("/") == wanted:
            return data
    return None


def _config(name: str) -> dict:
    from posttrain.models.aliases import materialise_alias

    for pattern, file in KNOWN_MODELS.items():
        if re.search(pattern, name.lower()):
            return json.loads((SHIPPED_CONFIGS / file).read_text(encoding="utf-8"))
    folder = materialise_alias(name) or Path(name).expanduser()
    if (folder / "config.json").is_file():
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    if folder.exists() or name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise UserError(
            f"model {name}: no config.json found (a run folder that does not exist yet, or a folder that is not "
            "a model). Train the earlier stage first, or set model.name to a hub id or model folder."
        )
    return _hub_config(name)


def _hub_config(name: str) -> dict:
    from huggingface_hub import hf_hub_download

    from posttrain.models.loading import hub_errors

    with hub_errors(name):
        return json.loads(Path(hf_hub_download(name, "config.json")).read_text(encoding="utf-8"))
