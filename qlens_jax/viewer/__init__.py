"""`qlens view`: a finished run as one self-contained HTML page (no server, no network).

The page embeds every signature, so it is for small runs: above `MAX_SIGNATURES` (features x
lenses) it is refused with a pointer to `qlens serve`, which browses runs of any size.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from qlens_jax.errors import InputError
from qlens_jax.io.atomic import write_bytes_atomic
from qlens_jax.io.rundir import open_finished
from qlens_jax.viewer.data import viewer_data
from qlens_jax.viewer.page import render

MAX_SIGNATURES = 50_000  # features x lenses embedded in one page (the demo's 10,240 x 6 is 24.6 MB)


def count_signatures(run_dir: str | Path, layers=None) -> int:
    """Signatures (rows: features x lenses) the viewer of `run_dir` would embed, from the file's
    metadata (or its `layer` column alone, when `layers` is given)."""
    _, signatures = open_finished(run_dir)
    if layers is None:
        return pq.ParquetFile(signatures).metadata.num_rows
    column = pq.read_table(signatures, columns=["layer"])["layer"]
    return int(pc.sum(pc.is_in(column, pa.array(list(layers), pa.int32()))).as_py() or 0)


def write_viewer(
    run_dir: str | Path, out: str | Path | None = None, title: str | None = None, layers=None
) -> tuple[Path, int]:
    """Write the viewer of `run_dir` (default `run_dir/viewer.html`); returns (path, features).

    Raises `InputError` (before reading the signatures) when the page would hold more than
    `MAX_SIGNATURES` signatures: such runs are browsed with `qlens serve DIR`.
    """
    n = count_signatures(run_dir, layers)
    if n > MAX_SIGNATURES:
        raise InputError(
            f"{run_dir}: {n:,} signatures (features x lenses{' at these layers' if layers is not None else ''}) are too many for "
            f"one self-contained page (limit {MAX_SIGNATURES:,}); browse the run with `qlens serve {run_dir}`, "
            "or view fewer layers with --layers"
        )
    data = viewer_data(run_dir, title, layers)
    path = Path(out) if out is not None else Path(run_dir) / "viewer.html"
    write_bytes_atomic(path, render(data).encode("utf-8"))
    return path, len(data["features"])


__all__ = ["MAX_SIGNATURES", "count_signatures", "render", "viewer_data", "write_viewer"]
