"""`qlens view`: a finished run as one self-contained HTML page (no server, no network)."""

from __future__ import annotations

from pathlib import Path

from qlens_jax.io.atomic import write_bytes_atomic
from qlens_jax.viewer.data import viewer_data
from qlens_jax.viewer.page import render


def write_viewer(run_dir: str | Path, out: str | Path | None = None, title: str | None = None, layers=None) -> tuple[Path, int]:
    """Write the viewer of `run_dir` (default `run_dir/viewer.html`); returns (path, features)."""
    data = viewer_data(run_dir, title, layers)
    path = Path(out) if out is not None else Path(run_dir) / "viewer.html"
    write_bytes_atomic(path, render(data).encode("utf-8"))
    return path, len(data["features"])


__all__ = ["render", "viewer_data", "write_viewer"]
