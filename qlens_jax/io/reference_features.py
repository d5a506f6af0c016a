"""The reference implementation's feature samples: pickles of `util.Feature` records.

A sample is a list of records with `feature` (int), `layer` (str), `type`, `size` (e.g.
"32k"), `sae_id`, `sae_release`, `model_id`, `activations` (`util.Activation` records) and an
optional `steering_cache` (docs/definitions.md section 7). The reference feature string is
`Feature {type}-{size}/{layer}/{feature}`.

Pickles can run arbitrary code, so they are read with an unpickler that maps `util.Feature`
and `util.Activation` to the plain local classes below and refuses every other global,
except the numpy constructors needed for numpy scalars and arrays (which only rebuild values
from bytes; object arrays go through this same unpickler) and `set`/`frozenset`.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qlens_jax.errors import InputError


class _Record:
    """Attributes restored from the pickle's state, whatever the original class defined."""

    def __init__(self, *args, **kwargs):
        self.__dict__.update(kwargs)

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2:  # (dict, slots) of slotted classes
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(f"unexpected state of type {type(state).__name__} for {type(self).__name__}")
        self.__dict__.update(state)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items() if k != "activations")
        return f"{type(self).__name__}({fields})"


class Feature(_Record):
    """Local stand-in for the reference's `util.Feature`."""


class Activation(_Record):
    """Local stand-in for the reference's `util.Activation`."""


_NUMPY = {"scalar", "_reconstruct"}
_ALLOWED = {
    ("util", "Feature"): Feature,
    ("util", "Activation"): Activation,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals listed in the module docstring."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in _NUMPY:
            from numpy._core import multiarray

            return getattr(multiarray, name)
        if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":  # protocol 5 arrays
            from numpy._core import numeric

            return numeric._frombuffer
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 stores bytes
            import codecs

            return codecs.encode
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} (only util.Feature / util.Activation records are read)"
        )


@dataclass(frozen=True)
class FeatureRef:
    """One feature named by a reference sample."""

    layer: int
    feature: int
    name: str | None  # "{type}-{size}", the reference's dictionary name, when both are given

    @property
    def feature_str(self) -> str | None:
        return f"Feature {self.name}/{self.layer}/{self.feature}" if self.name else None


def is_feature_sample(path: str | Path) -> bool:
    return Path(path).suffix.lower() in (".pkl", ".pickle")


def read_feature_sample(path: str | Path, option: str = "--features") -> list[FeatureRef]:
    """The (layer, feature) records of a reference feature-sample pickle, in file order
    (`option`: the command-line option errors name)."""
    return [ref for ref, _ in _records(path, option)]


def _records(path: str | Path, option: str) -> list[tuple[FeatureRef, Feature]]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            records = RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise InputError(f"{option} {path}: no such file") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError) as err:
        raise InputError(f"{option} {path}: not a readable reference feature sample ({err})") from None
    if not isinstance(records, (list, tuple)):
        raise InputError(f"{option} {path}: expected a list of util.Feature records, got {type(records).__name__}")
    refs = []
    for i, record in enumerate(records):
        if not isinstance(record, Feature):
            raise InputError(f"{option} {path}: item {i} is a {type(record).__name__}, not a util.Feature")
        try:
            layer, feature = int(record.layer), int(record.feature)
        except (AttributeError, TypeError, ValueError):
            raise InputError(f"{option} {path}: item {i} lacks an integer 'layer' and 'feature' ({record!r})") from None
        kind, size = getattr(record, "type", None), getattr(record, "size", None)
        refs.append((FeatureRef(layer, feature, f"{kind}-{size}" if kind and size else None), record))
    if not refs:
        raise InputError(f"{option} {path}: the sample is empty")
    return refs


def read_activating_tokens(path: str | Path) -> dict[tuple[int, int], list[str]]:
    """Per `(layer, feature)` of a reference feature sample, the token at the maximum of each of
    its stored activations, duplicates kept, in file order: the `A` of the authors'
    `input_score.py` (`collect_max_activating_tokens`: every activation with a
    `max_value_token_index` inside its `token_values`)."""
    out: dict[tuple[int, int], list[str]] = {}
    for i, (ref, record) in enumerate(_records(path, "--activations")):
        tokens = []
        for j, activation in enumerate(getattr(record, "activations", None) or []):
            index = getattr(activation, "max_value_token_index", None)
            pairs = getattr(activation, "token_values", None)
            if index is None:
                continue
            if not isinstance(pairs, (list, tuple)) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs
            ):
                raise InputError(
                    f"--activations {path}: item {i} ({ref.layer}/{ref.feature}), activation {j}: token_values "
                    "is not a list of (token, value) pairs"
                )
            if isinstance(index, (int, np.integer)) and index < len(
                pairs
            ):  # as theirs: a negative index counts from the end
                tokens.append(str(pairs[index][0]))
        out[(ref.layer, ref.feature)] = tokens
    return out
