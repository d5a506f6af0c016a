"""Feature vectors through the readout chunk by chunk, results streamed back to the host.

The readout is the floor of the whole job (`n_features x d_model x vocab` multiply-adds per
side and layer), so it runs as one program per feature chunk with an on-device top-k
(docs/definitions.md section 2). Only a chunk of the vectors is copied to the device at a time (read on
demand from the dictionary by `FeatureRows`); each chunk's top-k lists are fetched to the host
while the next chunk runs, with at most two chunks in flight, into result rows allocated once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Float

from qlens_jax import sharding
from qlens_jax.readout.sharded import Layout


def feature_chunk_for(vocab: int, budget_bytes: float) -> int:
    """Features per readout chunk so that a chunk's scores (and top-k work) fit the budget."""
    return int(max(1, min(4096, budget_bytes // (vocab * 4 * 3))))


class FeatureRows:
    """Rows of a dictionary's value vectors (`W_dec` rows) or key vectors (`W_enc` columns) for
    the features `index`, read on demand: slicing copies only the selected rows to the host."""

    def __init__(self, matrix, transposed: bool, index: np.ndarray):
        self.matrix, self.transposed, self.index = matrix, transposed, np.asarray(index)
        self.contiguous = (
            bool(len(self.index)) and (self.index == np.arange(self.index[0], self.index[0] + len(self.index))).all()
        )

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, selection) -> np.ndarray:
        ids = self.index[selection]
        if self.contiguous and isinstance(selection, slice) and len(ids):
            rows = slice(int(ids[0]), int(ids[-1]) + 1)
        else:
            rows = jnp.asarray(ids)
        block = self.matrix[:, rows].T if self.transposed else self.matrix[rows]
        return np.asarray(block, np.float32)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        full = self[:]
        return full if dtype is None else full.astype(dtype)


def host_rows(vectors) -> "np.ndarray | FeatureRows":
    """Vectors as something sliceable on the host: `FeatureRows` as they are (read per chunk)."""
    return vectors if isinstance(vectors, FeatureRows) else sharding.to_host(vectors)


def chunk_size(size: int, n: int, mesh: Mesh | None) -> int:
    """Rows per chunk: `size` rows per device (the budget is per device), at most the `n`
    rows there are, rounded up to split evenly over the devices."""
    devices = 1 if mesh is None else sharding.axis_size(mesh, "features")
    size = max(1, min(size * devices, n))
    return -(-size // devices) * devices


def place(x: np.ndarray, layout: Layout) -> jax.Array:
    """Stacked chunks `[c, size, ...]` on device(s); on a mesh their rows are split over the
    layout's row axes."""
    if layout.mesh is None:
        return jnp.asarray(x)
    return sharding.put(x, layout.mesh, None, layout.row_axis, *([None] * (x.ndim - 2)))


def chunked(x: Float[np.ndarray, " n *rest"], size: int, layout: Layout) -> tuple[jax.Array, int]:
    """All of `x` as `[chunks, size, ...]` on device (zero rows pad the last chunk), and `n`:
    for small inputs and for inspecting the compiled readout."""
    n = x.shape[0]
    size = chunk_size(size, n, layout.mesh)
    padded = -(-n // size) * size
    x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)]) if padded > n else x
    return place(x.reshape(padded // size, size, *x.shape[1:]), layout), n


def iter_chunks(x: "np.ndarray | FeatureRows", size: int, layout: Layout) -> Iterator[tuple[jax.Array, int]]:
    """`[1, size, ...]` device chunks of `x` and their count of real rows, one at a time: only
    a chunk is ever copied, so the readout's memory is the dictionary plus chunk buffers,
    whatever the number of features."""
    n = len(x)
    size = chunk_size(size, n, layout.mesh)
    for start in range(0, n, size):
        chunk = np.asarray(x[start : start + size], np.float32)
        if chunk.shape[0] < size:
            chunk = np.concatenate([chunk, np.zeros((size - chunk.shape[0], *chunk.shape[1:]), np.float32)])
        yield place(chunk[None], layout), min(size, n - start)


class ResultRows:
    """Host arrays of `n` rows filled in order from chunk results (allocated on the first)."""

    def __init__(self, n: int):
        self.n, self.filled, self.tree = n, 0, None

    def append(self, tree, count: int) -> None:
        """Fetch a finished chunk's `[1, size, ...]` results and store their first `count` rows."""
        host = jax.tree.map(lambda a: sharding.to_host(a)[0][:count], tree)
        if self.tree is None:
            self.tree = jax.tree.map(lambda a: np.empty((self.n, *a.shape[1:]), a.dtype), host)
        for out, rows in zip(jax.tree.leaves(self.tree), jax.tree.leaves(host)):
            out[self.filled : self.filled + count] = rows
        self.filled += count


def _start_copy_to_host(tree) -> None:
    """Start copying a dispatched chunk's results to the host as soon as they are computed."""
    for a in jax.tree.leaves(tree):
        if isinstance(a, jax.Array) and a.is_fully_addressable:
            a.copy_to_host_async()


def run_chunks(fn: Callable[[jax.Array], object], x: "np.ndarray | FeatureRows", size: int, layout: Layout):
    """`fn(chunk)` for every chunk, as host arrays with one row per row of `x` (the tree of
    `fn`'s outputs). At most two chunks are in flight: without this, asynchronous dispatch
    would queue every chunk's input at once. Each chunk's results are copied into the output
    as they arrive, so they are held once (not as pieces and then their concatenation)."""
    out, pending = ResultRows(len(x)), None
    for chunk, count in iter_chunks(x, size, layout):
        current = (fn(chunk), count)
        _start_copy_to_host(current[0])
        if pending is not None:
            out.append(*pending)
        pending = current
    if pending is not None:
        out.append(*pending)
    assert out.tree is not None, "no rows to read"
    return out.tree
