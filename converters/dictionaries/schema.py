"""Typed checks of a dictionary format's config: one list of `Field`s per format, one function.

A config value of the wrong type is refused naming the file and the field, before any
conversion: `"d_sae": "lots"`, `"d_in": [128]` or `"metadata": "x"` never reach `int()` or
`.get()`, and a float is never truncated into an integer (`"d_sae": 12.5` is an error; an
integral float such as `16384.0` is taken as the integer it is). JSON `null` counts as absent.
Keys no field names are left alone: published configs carry many training settings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qlens_jax.dictionaries import DictionaryError

KINDS = ("int", "float", "str", "bool", "dict", "list")


@dataclass(frozen=True)
class Field:
    """One config field: its name (dotted for a field of a nested mapping, `metadata.hook_name`),
    its kind (one of `KINDS`, or alternatives like `"str|bool"`, tried in order), whether it
    must be present, and the least value of a number."""

    name: str
    kind: str
    required: bool = False
    minimum: int | float | None = None


def _typed(value: Any, kind: str) -> tuple[bool, Any]:
    """(whether `value` is of `kind`, the value as that kind)."""
    if kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return True, value
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            return True, int(value)
        return False, value
    if kind == "float":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return False, value
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            return False, value
        return math.isfinite(number), number
    expected = {"str": str, "bool": bool, "dict": dict, "list": list}[kind]
    return isinstance(value, expected), value


def _describe(value: Any) -> str:
    shown = repr(value)
    return f"{type(value).__name__} {shown if len(shown) <= 40 else shown[:37] + '...'}"


_EXPECTED = {
    "int": "an integer",
    "float": "a finite number",
    "str": "a string",
    "bool": "true or false",
    "dict": "a mapping",
    "list": "a list",
}


def _as_kind(value: Any, kind: str) -> tuple[bool, Any]:
    """`_typed` for a kind with alternatives (`"str|bool"`): the first that fits."""
    for alternative in kind.split("|"):
        ok, typed = _typed(value, alternative)
        if ok:
            return True, typed
    return False, value


def check_config(config: dict, fields: Sequence[Field], origin: str, what: str = "config key") -> dict:
    """`config` with each field of `fields` checked (`DictionaryError` naming `origin` and the
    field, called `what`, otherwise) and integral floats of integer fields made ints; other keys
    as they are.
    A field of a nested mapping (one level deep) is checked only where that mapping is one
    (list the mapping's own field first)."""
    checked = {key: (dict(value) if isinstance(value, dict) else value) for key, value in config.items()}
    for field in fields:
        *parents, key = field.name.split(".")
        holder = checked
        for parent in parents:
            holder = holder.get(parent) if isinstance(holder, dict) else None
        if not isinstance(holder, dict):
            continue
        value = holder.get(key)
        if value is None:
            if field.required:
                raise DictionaryError(f"{origin}: missing {what} {field.name!r}")
            continue
        ok, value = _as_kind(value, field.kind)
        if not ok:
            expected = " or ".join(_EXPECTED[k] for k in field.kind.split("|"))
            raise DictionaryError(f"{origin}: {what} {field.name!r} must be {expected}, got {_describe(value)}")
        if field.minimum is not None and value < field.minimum:
            raise DictionaryError(f"{origin}: {what} {field.name!r} must be at least {field.minimum:g}, got {value}")
        holder[key] = value
    return checked
