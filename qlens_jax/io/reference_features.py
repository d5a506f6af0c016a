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
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only util.Feature / util.Activation records are read)")


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


def read_feature_sample(path: str | Path) -> list[FeatureRef]:
    """The (layer, feature) records of a reference feature-sample pickle, in file order."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            records = RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise InputError(f"--features {path}: no such file") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError) as err:
        raise InputError(f"--features {path}: not a readable reference feature sample ({err})") from None
    if not isinstance(records, (list, tuple)):
        raise InputError(f"--features {path}: expected a list of util.Feature records, got {type(records).__name__}")
    refs = []
    for i, record in enumerate(records):
        if not isinstance(record, Feature):
            raise InputError(f"--features {path}: item {i} is a {type(record).__name__}, not a util.Feature")
        try:
            layer, feature = int(record.layer), int(record.feature)
        except (AttributeError, TypeError, ValueError):
            raise InputError(f"--features {path}: item {i} lacks an integer 'layer' and 'feature' ({record!r})") from None
        kind, size = getattr(record, "type", None), getattr(record, "size", None)
        refs.append(FeatureRef(layer, feature, f"{kind}-{size}" if kind and size else None))
    if not refs:
        raise InputError(f"--features {path}: the sample is empty")
    return refs
