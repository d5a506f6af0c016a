"""The final norm's per-feature statistics (`value_factors.norm_statistics`) kept on disk, beside
the dictionary's rows in the row cache (`rows/<dictionary sha256>/norm-stats/`), never in a run
folder.

The statistics of `m_i = M_p v_i` depend on the dictionary (its folder is its content hash), the
operator `M_p` and the norm's kind, epsilon and compute dtype; the file name is a hash of those
last ones, so a run with other operators, or a model with another norm, finds no stale file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from qlens_jax.models.transformer import Norm

FOLDER = "norm-stats"


def statistics_path(rows_folder: Path, op: np.ndarray, norm: Norm, dtype: str) -> Path:
    """Where the statistics of the rows in `rows_folder` transported by `op` are kept."""
    digest = hashlib.sha256(np.ascontiguousarray(op, np.float32).tobytes())
    digest.update(
        json.dumps(
            {"shape": list(op.shape), "norm": norm.kind, "eps": norm.eps, "dtype": dtype}, sort_keys=True
        ).encode()
    )
    return rows_folder / FOLDER / f"{digest.hexdigest()}.npy"


def load_statistics(path: Path, n: int) -> np.ndarray | None:
    """The `[n, 2]` float32 statistics at `path`, or None when there are none (or not of that shape)."""
    try:
        stats = np.load(path)
    except (OSError, ValueError):
        return None
    return stats if stats.shape == (n, 2) and stats.dtype == np.float32 else None


def save_statistics(path: Path, stats: np.ndarray) -> None:
    """Write `stats` at `path` whole or not at all (a concurrent writer's file is as good)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(temporary, "wb") as f:
        np.save(f, np.ascontiguousarray(stats, np.float32))
    os.replace(temporary, path)
