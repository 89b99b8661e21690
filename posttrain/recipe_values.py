"""Checking a recipe's values against the type hints of its sections and of TRL's config classes: numbers written
as text (YAML 1.1 reads 2e-4 as a string) become numbers, and anything else that does not fit is a UserError that
names the key, the part of the value that is wrong and what was expected."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from typing import Any, Literal

from posttrain.errors import UserError

_WHOLE = object()


class _Mismatch(Exception):
    """The value does not fit the type; the message says what was expected, `where` which part of the value
    (`[1].weight` inside a list of sources) and `found` what was there."""

    def __init__(self, expected: str, where: str = "", found: Any = _WHOLE):
        super().__init__(expected)
        self.where, self.found = where, found

    def inside(self, where: str, found: Any) -> _Mismatch:
        return _Mismatch(str(self), where + self.where, found if self.found is _WHOLE else self.found)


def check_value(value: Any, hint: Any, key: str) -> Any:
    """Return the value (numbers written as text, like YAML's 2e-4, become numbers) or raise a UserError."""
    try:
        return _coerce(value, hint)
    except _Mismatch as err:
        found = value if err.found is _WHOLE else err.found
        raise UserError(f"recipe key {key}{err.where}: expected {err}, got {found!r}.") from None


def _coerce(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _coerce(value, option)
            except _Mismatch as err:
                errors.append((option, err))
        # a list or mapping that fits the shape of one option is reported by what is wrong inside it
        for option, err in errors:
            if _same_shape(value, option):
                raise err
        raise _Mismatch(" or ".join(_describe(option) for option in typing.get_args(hint)))
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch("null")
    if origin is Literal:
        if value in typing.get_args(hint):
            return value
        raise _Mismatch(_describe(hint))
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("true or false")
    if hint in (int, float):
        return _coerce_number(value, hint)
    if hint is str:
        if isinstance(value, str):
            return value
        raise _Mismatch("text")
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise _Mismatch(_describe(hint))
        (item_hint,) = typing.get_args(hint) or (Any,)
        items = []
        for i, item in enumerate(value):
            try:
                items.append(_coerce(item, item_hint))
            except _Mismatch as err:
                raise err.inside(f"[{i}]", item) from None
        return items
    if origin is dict or hint is dict:
        if isinstance(value, dict):
            return value
        raise _Mismatch("a mapping")
    if dataclasses.is_dataclass(hint):
        return _coerce_dataclass(value, hint)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        choices = [member.value for member in hint]
        if value in choices:
            return value
        raise _Mismatch("one of " + ", ".join(map(str, choices)))
    return value  # a type this checker does not model is passed through for TRL to judge


def _same_shape(value: Any, hint: Any) -> bool:
    if isinstance(value, list):
        return typing.get_origin(hint) is list
    return isinstance(value, dict) and dataclasses.is_dataclass(hint)


def _coerce_dataclass(value: Any, hint: type) -> Any:
    """A mapping inside a section (a data source): its keys checked like a section's, then the class's own checks."""
    keys = [f.name for f in dataclasses.fields(hint)]
    if not isinstance(value, dict):
        raise _Mismatch(_describe(hint))
    for key in value:
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1)
            hint_text = f"; did you mean {close[0]}?" if close else ""
            raise _Mismatch(f"one of the keys {', '.join(keys)}{hint_text}", f".{key}", key)
    hints = typing.get_type_hints(hint)
    checked = {}
    for key, item in value.items():
        try:
            checked[key] = _coerce(item, hints[key])
        except _Mismatch as err:
            raise err.inside(f".{key}", item) from None
    try:
        return hint(**checked)
    except UserError as err:
        raise _Mismatch(f"{_describe(hint)} ({str(err).rstrip('.')})") from None


def _coerce_number(value: Any, hint: type) -> Any:
    if isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as text
        try:
            value = float(value)
        except ValueError:
            raise _Mismatch(_describe(hint)) from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Mismatch(_describe(hint))
    if hint is int:
        if float(value).is_integer():
            return int(value)
        raise _Mismatch("a whole number")
    return value


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(hint)))
    if dataclasses.is_dataclass(hint):
        return "a mapping of " + ", ".join(f.name for f in dataclasses.fields(hint))
    if typing.get_origin(hint) is list:
        return "a list of " + " or ".join(_describe(option) for option in typing.get_args(hint) or (Any,))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "text", type(None): "null"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))
