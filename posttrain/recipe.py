"""Recipes: a YAML file mapped onto typed sections. Defaults < YAML < `--set section.key=value`.

Each section is a small dataclass whose field `help` is what errors and `posttrain recipes --keys` show.
The `train:` section is not re-declared here: it is checked against the method's own TRL config class.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from posttrain.errors import UserError
from posttrain.methods import METHODS
from posttrain.recipe_values import check_value
from posttrain.sections import DataSection, LoraSection, ModelSection

# TRL fields that posttrain sets from other recipe keys, so a user sets them in one place only.
OWNED_TRAIN_KEYS = {
    "output_dir": "set the top-level `output_dir` (or pass --output-dir)",
    "bf16": "set `model.precision`",
    "fp16": "set `model.precision`",
    "max_length": "set `data.max_length`",
    "dataloader_pin_memory": "posttrain pins memory on CUDA only",
    "use_cpu": "posttrain trains on the CPU exactly when no CUDA GPU is present",
}
# Values posttrain accepts for TRL fields and settles before the TRL config is built (methods/trl_backed.py).
POSTTRAIN_TRAIN_VALUES = {"activation_checkpointing": "auto"}
# Keys written into a run folder's recipe.yaml that describe the run rather than configure it.
RUN_RECORD_KEYS = ("versions", "base_model")
SHIPPED_RECIPES = Path(__file__).parent / "recipes"  # inside an installed wheel
REPO_RECIPES = Path(__file__).parent.parent / "recipes"  # in a source checkout


@dataclass
class Recipe:
    method: str
    model: ModelSection
    data: DataSection
    lora: LoraSection = field(default_factory=LoraSection)
    train: dict[str, Any] = field(default_factory=dict)
    output_dir: str = ""
    source: str = ""  # where the recipe came from, for messages
    own_sections: dict[str, Any] = field(default_factory=dict)  # the method's own, e.g. ppo: (see methods.METHODS)

    def __getattr__(self, name: str) -> Any:
        """A method's own section reads like the others: recipe.ppo, recipe.rs, recipe.reward."""
        own = self.__dict__.get("own_sections", {})
        if name in own:
            return own[name]
        raise AttributeError(f"a {self.__dict__.get('method')} recipe has no section {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The recipe as YAML-ready data, in the order a person reads it."""
        sections = {name: dataclasses.asdict(getattr(self, name)) for name in sections_of(self.method)}
        return {"method": self.method, **sections, "train": dict(self.train), "output_dir": self.output_dir}


SECTIONS = {"model": ModelSection, "lora": LoraSection, "data": DataSection}


def sections_of(method: str) -> dict[str, type]:
    """The sections a method's recipe takes: the common ones and its own (for what TRL has no field for)."""
    return SECTIONS | METHODS[method].sections


# ---------------------------------------------------------------- finding and reading recipes


def shipped_recipes() -> dict[str, Path]:
    """Shipped recipes by name (`smollm2-135m/sft`), from the wheel or the source checkout."""
    root = SHIPPED_RECIPES if SHIPPED_RECIPES.is_dir() else REPO_RECIPES
    return {str(p.relative_to(root).with_suffix("")): p for p in sorted(root.glob("*/*.yaml"))}


def find_recipe(ref: str) -> Path:
    path = Path(ref).expanduser()
    if path.is_file():
        return path
    shipped = shipped_recipes()
    name = ref.removesuffix(".yaml").removeprefix("recipes/")
    if name in shipped:
        return shipped[name]
    close = difflib.get_close_matches(name, list(shipped), n=1)
    hint = f" Did you mean {close[0]}?" if close else ""
    raise UserError(
        f"recipe not found: {ref}. Give a YAML path or a shipped recipe name.{hint}\n"
        "List the shipped ones with `posttrain recipes`."
    )


def default_chat_template(model: str) -> str:
    """The chat template a recipe for `model` picks: the shipped recipes' choice for it, else model.chat_template's
    default (Llama 2's)."""
    for path in shipped_recipes().values():
        spec = read_yaml(path).get("model") or {}
        if spec.get("name") == model and spec.get("chat_template"):
            return spec["chat_template"]
    return ModelSection.__dataclass_fields__["chat_template"].default


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else "?"
        raise UserError(f"{path}: YAML syntax error at line {line}: {err.problem}.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping (method:, model:, data:, ...), got {type(data).__name__}.")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` strings; the value is read as YAML (so 3, true and [a, b] keep their types)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected section.key=value, e.g. --set train.learning_rate=1e-4.")
        value = yaml.safe_load(raw) if raw.strip() else None
        *parents, leaf = key.strip().split(".")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {part} is not a section.")
        node[leaf] = value
    return data


def load_recipe(ref: str, overrides: list[str] = (), method: str | None = None) -> Recipe:
    """Read, override and validate a recipe. Every problem is a UserError naming the file and key."""
    path = find_recipe(ref)
    data = apply_overrides(read_yaml(path), list(overrides))
    try:
        return build_recipe(data, expected_method=method, source=str(path))
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def build_recipe(data: dict[str, Any], expected_method: str | None = None, source: str = "") -> Recipe:
    data = {k: v for k, v in data.items() if k not in RUN_RECORD_KEYS}
    method = data.get("method", expected_method)
    if method not in METHODS:
        raise UserError(f"recipe key method must be one of {', '.join(METHODS)}, got {method!r}.")
    if expected_method and method != expected_method:
        raise UserError(f"this is a {method} recipe; run it with `posttrain {method} ...`.")
    known = {"method", "train", "output_dir", *sections_of(method)}
    _reject_unknown(data, known, "")
    sections = {}
    for name, cls in sections_of(method).items():
        values = data.get(name) or {}
        if not isinstance(values, dict):
            raise UserError(f"recipe key {name} must be a mapping of keys, got {values!r}.")
        sections[name] = build_section(cls, values, name)
    train = data.get("train") or {}
    if not isinstance(train, dict):
        raise UserError(f"recipe key train must be a mapping of TRL config fields, got {train!r}.")
    output_dir = data.get("output_dir") or ""
    if not isinstance(output_dir, str) or not output_dir:
        raise UserError("recipe key output_dir is required (or pass --output-dir).")
    return Recipe(
        method=method,
        model=sections.pop("model"),
        data=sections.pop("data"),
        lora=sections.pop("lora"),
        train=check_train_section(method, train),
        output_dir=output_dir,
        source=source,
        own_sections=sections,
    )


def build_section(cls: type, values: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    elsewhere = sorted(set(values) & set(getattr(cls, "USED_ELSEWHERE", {})))  # keys of other methods' sections
    if elsewhere:
        key = elsewhere[0]
        raise UserError(
            f"recipe key {section}.{key} does nothing in a {section} run: it is a key of {cls.USED_ELSEWHERE[key]}."
        )
    _reject_unknown(values, set(fields), f"{section}.")
    checked = {key: check_value(value, hints[key], f"{section}.{key}") for key, value in values.items()}
    return cls(**checked)


def check_train_section(method: str, train: dict[str, Any]) -> dict[str, Any]:
    if METHODS[method].train_config is None:
        if train:
            raise UserError(
                f"a {method} recipe takes its settings in the {method}: section (posttrain's own trainer); "
                "leave train: empty."
            )
        return {}
    for key, fix in OWNED_TRAIN_KEYS.items():
        if key in train:
            raise UserError(f"recipe key train.{key} is set by posttrain: {fix}.")
    from posttrain.trl_compat import train_fields

    config_cls = train_config_class(method)
    fields = train_fields(config_cls)  # the names of this transformers version, and the newer ones they stand for
    _reject_unknown(train, set(fields), "train.", what=f"{config_cls.__name__} field")
    hints = typing.get_type_hints(config_cls)
    checked = {}
    for key, value in train.items():
        own = POSTTRAIN_TRAIN_VALUES.get(key) == value  # settled by posttrain, not a value TRL takes
        checked[key] = value if own else check_value(value, hints.get(fields[key], Any), f"train.{key}")
    return checked


def train_config_class(method: str) -> type:
    module, name = METHODS[method].train_config
    return getattr(importlib.import_module(module), name)


def _reject_unknown(values: dict[str, Any], known: set[str], prefix: str, what: str = "") -> None:
    """An unknown key is an error that suggests the closest known one, or lists them (unless there are hundreds)."""
    for key in values:
        if key in known:
            continue
        close = difflib.get_close_matches(str(key), sorted(known), n=1)
        if close:
            hint = f" Did you mean {prefix}{close[0]}?"
        else:
            hint = f" It is not a {what}." if what else f" Known: {', '.join(sorted(known))}."
        raise UserError(f"unknown recipe key {prefix}{key}.{hint}")


def field_help(cls: type) -> list[tuple[str, Any, str]]:
    """(key, default, help) for every field of a section, for `posttrain recipes --keys`."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append((f.name, default, f.metadata.get("help", "")))
    return rows


def save_recipe(recipe: Recipe, path: Path, extra: dict[str, Any]) -> None:
    data = recipe.to_dict() | extra
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
