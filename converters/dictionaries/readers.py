"""Reading dictionary files into numpy, with errors that name the file and the key.

Every reader turns a missing, truncated or corrupt file into a `DictionaryError` naming the
file; `TensorStore.take` turns a missing key, a non-finite value or a leftover key into one
naming the key. Dtypes are kept as stored (bfloat16 via ml_dtypes).
"""

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from qlens_jax.dictionaries import DictionaryError


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DictionaryError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DictionaryError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DictionaryError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from `path`."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise DictionaryError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise DictionaryError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise DictionaryError(f"{path}: expected a YAML mapping, got {type(data).__name__}")
    return data


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file, one key at a time (no second full copy)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise DictionaryError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="numpy") as f:
            return {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise DictionaryError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from None


def read_safetensors_slice(path: Path, key: str, index: tuple) -> tuple[np.ndarray, list[int]]:
    """`file[key][index]` read without loading the rest of the tensor, and the tensor's full
    shape (for tensors far larger than the part needed, such as a cross-layer transcoder's
    decoder of every later layer)."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise DictionaryError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="numpy") as f:
            if key not in f.keys():
                raise DictionaryError(f"{path}: missing key {key!r} (found: {sorted(f.keys())})")
            part = f.get_slice(key)
            shape = list(part.get_shape())
            if len(shape) != len(index):
                raise DictionaryError(f"{path}: key {key!r} has shape {tuple(shape)}, expected {len(index)} axes")
            return part[index], shape
    except (SafetensorError, OSError, ValueError) as e:
        raise DictionaryError(f"{path}: cannot read safetensors file (truncated or corrupt?): {e}") from None


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an `.npz` archive."""
    if not path.is_file():
        raise DictionaryError(f"{path}: file not found")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as data:
            return {key: np.asarray(data[key]) for key in data.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise DictionaryError(f"{path}: cannot read .npz archive (truncated or corrupt?): {e}") from None


def torch_to_numpy(t) -> np.ndarray:
    """A torch tensor as a numpy array of the same dtype (bfloat16 through ml_dtypes)."""
    import ml_dtypes
    import torch

    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def read_torch(path: Path) -> dict[str, Any]:
    """A PyTorch checkpoint holding a flat dict, loaded with `weights_only=True` (no code runs).

    Tensors become numpy arrays; other entries (strings, ints, nested dicts) are kept.
    """
    if not path.is_file():
        raise DictionaryError(f"{path}: file not found")
    try:
        import torch
    except ImportError:
        raise DictionaryError(
            f"{path}: reading PyTorch checkpoints needs torch (pip install 'qlens-jax[torch]')"
        ) from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise DictionaryError(f"{path}: cannot read PyTorch checkpoint (truncated or corrupt?): {e}") from None
    if not isinstance(data, dict):
        raise DictionaryError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    return {k: torch_to_numpy(v) if isinstance(v, torch.Tensor) else v for k, v in data.items()}


def torch_keys(path: Path) -> frozenset[str]:
    """The top-level keys of a PyTorch checkpoint, read memory-mapped so that its tensors are
    not loaded (to tell formats apart before reading one)."""
    try:
        import torch

        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an old (non-zip) checkpoint cannot be memory-mapped: read it whole
        data = read_torch(path)
    if not isinstance(data, dict):
        raise DictionaryError(f"{path}: expected a dict of tensors, got {type(data).__name__}")
    return frozenset(data)


class TensorStore:
    """The tensors of one file, consumed key by key.

    `take` checks presence and finiteness; `finish` raises if any key was left unread, so a
    file with parameters the converter does not understand is refused, not half-used.
    """

    def __init__(self, tensors: dict[str, Any], origin: str):
        self.tensors = dict(tensors)
        self.origin = origin

    def has(self, key: str) -> bool:
        return key in self.tensors

    def take(self, key: str, *, finite: bool = True) -> np.ndarray:
        """Remove and return tensor `key`; `finite=False` only rejects NaN (for log densities)."""
        if key not in self.tensors:
            raise DictionaryError(f"{self.origin}: missing key {key!r} (found: {sorted(self.tensors)})")
        value = self.tensors.pop(key)
        if not isinstance(value, np.ndarray):
            raise DictionaryError(f"{self.origin}: key {key!r} is a {type(value).__name__}, not a tensor")
        check_values(value, self.origin, key, finite=finite)
        return value

    def take_optional(self, key: str, *, finite: bool = True) -> np.ndarray | None:
        return self.take(key, finite=finite) if key in self.tensors else None

    def discard(self, *keys: str) -> None:
        """Drop keys that are known and not needed (training statistics, for instance)."""
        for key in keys:
            self.tensors.pop(key, None)

    def finish(self) -> None:
        if self.tensors:
            raise DictionaryError(
                f"{self.origin}: unexpected keys {sorted(self.tensors)}; this converter does "
                "not know what they do, so it refuses to ignore them"
            )


def check_values(value: np.ndarray, origin: str, key: str, *, finite: bool = True) -> None:
    """Raise if `value` holds NaN (or, with `finite`, infinities). Integer tensors pass."""
    if value.dtype.kind in "iub":
        return
    v = value if value.dtype.kind == "f" and value.dtype.itemsize >= 4 else value.astype(np.float32)
    bad = np.isnan(v) if not finite else ~np.isfinite(v)
    n_bad = int(bad.sum())
    if n_bad:
        what = "NaN" if not finite else "NaN/Inf"
        first = np.unravel_index(int(np.argmax(bad)), value.shape)
        raise DictionaryError(
            f"{origin}: key {key!r} has {n_bad} {what} value(s) of {value.size} "
            f"(first at index {tuple(int(i) for i in first)})"
        )
