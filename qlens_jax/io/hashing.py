"""Content hashes (sha256) of what a run reads: converted weights, files, arrays, and the
package versions and device recorded next to them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

_CHUNK = 1 << 24


def _update_array(h, array) -> None:
    a = np.ascontiguousarray(np.asarray(array))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.reshape(-1).view(np.uint8).data)


def arrays_hash(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        _update_array(h, a)
    return h.hexdigest()


def tree_hash(tree, static) -> str:
    """sha256 over every array leaf of an Equinox module (path, dtype, shape, bytes) and a
    JSON-able description of its static settings; where the weights came from is not part
    of it, so the same weights in another folder hash the same."""
    import equinox as eqx
    import jax

    h = hashlib.sha256(json.dumps(static, sort_keys=True, default=repr).encode())
    for path, leaf in jax.tree_util.tree_leaves_with_path(eqx.filter(tree, eqx.is_array)):
        h.update(jax.tree_util.keystr(path).encode())
        _update_array(h, leaf)
    return h.hexdigest()


def model_hash(model) -> str:
    return tree_hash(model, repr(model.config))


def dictionary_hash(dictionary) -> str:
    import equinox as eqx

    static = {
        f.name: getattr(dictionary, f.name)
        for f in dataclasses.fields(dictionary)
        if f.name != "info" and not eqx.is_array(getattr(dictionary, f.name))
    }
    return tree_hash(dictionary, static)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def path_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and bytes, sorted)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            h.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(_CHUNK):
                h.update(block)
    return h.hexdigest()


def json_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def versions() -> dict:
    """Package versions, Python and the JAX device, as recorded in run.json."""
    import jax

    def version(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    device = jax.devices()[0]
    packages = ("qlens-jax", "jax", "jaxlib", "equinox", "numpy", "pyarrow", "tokenizers", "orbax-checkpoint")
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": {name: version(name) for name in packages},
        "device": {"platform": device.platform, "kind": device.device_kind, "count": jax.device_count()},
    }
