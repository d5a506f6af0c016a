"""Applying the readouts of each lens to (transported) feature vectors, chunk by chunk."""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jaxtyping import Array, Float

from qlens_jax import sharding

from qlens_jax.lens.readout import TopK, dot_scores, value_scores
from qlens_jax.models import Transformer


def _transported(op, x):
    return x if op is None else jnp.matmul(x, op.T.astype(jnp.float32))


def _value_score(model, remove_bias, op, x):
    return value_scores(model, _transported(op, x), remove_bias)


def _key_score(matrix, op, x):
    return dot_scores(matrix, _transported(op, x))


def _topk(scores, k) -> TopK:
    top_scores, top_ids = jax.lax.top_k(scores, k)
    neg, bottom_ids = jax.lax.top_k(-scores, k)
    return TopK(top_ids, top_scores, bottom_ids, -neg)


def _constrain(x, rows):
    """Keep feature rows split over the mesh (`rows`: a sharding of the row axis, or None)."""
    return x if rows is None else jax.lax.with_sharding_constraint(x, rows)


@eqx.filter_jit
def _readout(score_fn, chunks, k: int, rows=None) -> TopK:
    def one(chunk):
        scores = _constrain(score_fn(_constrain(chunk, rows)), rows)
        return TopK(*(_constrain(a, rows) for a in _topk(scores, k)))

    return jax.lax.map(one, chunks)


@eqx.filter_jit
def _readout_first_order(score_fn, terms_op, chunks, k: int, rows=None):
    def one(chunk):
        chunk = _constrain(chunk, rows)
        terms = chunk if terms_op is None else jnp.einsum("nd,tid->nti", chunk, terms_op)
        total = terms.sum(1)
        energy = jnp.einsum("ntd,nd->nt", terms, total) / jnp.maximum((total * total).sum(-1), 1e-30)[:, None]
        n, t, d = terms.shape
        per_term = _topk(score_fn(terms.reshape(n * t, d)), k)
        per_term = TopK(*(a.reshape(n, t, k) for a in per_term))
        return _topk(_constrain(score_fn(total), rows), k), per_term, energy

    return jax.lax.map(one, chunks)


def _chunk_size(size: int, n: int, mesh: Mesh | None) -> int:
    devices = 1 if mesh is None else sharding.axis_size(mesh, "features")
    size = max(1, min(size, n))
    return -(-size // devices) * devices


def _place(x: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """One chunk on device(s); on a mesh its rows are split over every device (`features`)."""
    if mesh is None:
        return jnp.asarray(x)
    return sharding.put(x, mesh, None, "features", *([None] * (x.ndim - 2)))


def _chunked(x: Float[np.ndarray, "n *rest"], size: int, mesh: Mesh | None) -> tuple[jax.Array, int]:
    """All of `x` as `[chunks, size, ...]` (zero rows pad the last chunk), for small inputs."""
    n = x.shape[0]
    size = _chunk_size(size, n, mesh)
    padded = -(-n // size) * size
    x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)]) if padded > n else x
    return _place(x.reshape(padded // size, size, *x.shape[1:]), mesh), n


class FeatureRows:
    """Rows of a dictionary's value vectors (`W_dec` rows) or key vectors (`W_enc` columns) for
    the features `index`, read on demand: slicing copies only the selected rows to the host."""

    def __init__(self, matrix, transposed: bool, index: np.ndarray):
        self.matrix, self.transposed, self.index = matrix, transposed, np.asarray(index)
        self.contiguous = bool(len(self.index)) and (self.index == np.arange(self.index[0], self.index[0] + len(self.index))).all()

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


def _iter_chunks(x, size: int, mesh: Mesh | None):
    """`[1, size, ...]` device chunks of `x`, one at a time: only a chunk is ever copied, so the
    readout's memory is the dictionary plus chunk buffers, whatever the number of features."""
    n = len(x)
    size = _chunk_size(size, n, mesh)
    for start in range(0, n, size):
        chunk = np.asarray(x[start : start + size], np.float32)
        if chunk.shape[0] < size:
            chunk = np.concatenate([chunk, np.zeros((size - chunk.shape[0], *chunk.shape[1:]), np.float32)])
        yield _place(chunk[None], mesh), min(size, n - start)


def _run_chunks(fn, x: "np.ndarray | FeatureRows", size: int, mesh: Mesh | None):
    """`fn(chunk)` for every chunk, as host arrays with one row per row of `x` (the tree of
    `fn`'s outputs). At most two chunks are in flight: without this, asynchronous dispatch
    would queue every chunk's input at once. Each chunk's results are copied into the output
    as they arrive, so they are held once (not as pieces and then their concatenation)."""
    out, pending = _Rows(len(x)), None
    for chunk, count in _iter_chunks(x, size, mesh):
        current = (fn(chunk), count)
        if pending is not None:
            out.append(*pending)
        pending = current
    if pending is not None:
        out.append(*pending)
    return out.tree


class _Rows:
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


@dataclass
class ReadoutContext:
    """What readouts need: the model (value side), the centered embedding matrix (key side)."""

    model: Transformer
    key_matrix: Float[Array, "vocab d"]
    remove_final_norm_bias: bool
    k: int
    feature_chunk: int
    mesh: Mesh | None = None

    @property
    def row_sharding(self):
        if self.mesh is None:
            return None
        return NamedSharding(self.mesh, sharding.spec("features", None))

    def score_fn(self, side: str, op=None, logit_lens: bool = False):
        if side == "value":
            return eqx.Partial(_value_score, self.model, self.remove_final_norm_bias, op)
        matrix = self.model.W_E if logit_lens else self.key_matrix
        return eqx.Partial(_key_score, matrix, op)

    def read(self, side: str, vectors, op=None, logit_lens: bool = False) -> dict:
        """Top/bottom-k of `vectors @ op.T` (or `vectors`) under the side's readout."""
        score_fn = self.score_fn(side, op, logit_lens)
        fn = lambda chunk: _readout(score_fn, chunk, self.k, self.row_sharding)
        return dict(zip(TopK._fields, _run_chunks(fn, _host(vectors), self.feature_chunk, self.mesh)))

    def read_first_order(self, side: str, vectors, terms_op) -> dict:
        """Total and per-term signatures and energies; `vectors` are raw `[n, d]` with
        `terms_op [T, d, d]`, or already transported terms `[n, T, d]` with `terms_op=None`."""
        size = max(1, self.feature_chunk // (1 + (terms_op.shape[0] if terms_op is not None else vectors.shape[1])))
        score_fn = self.score_fn(side)
        fn = lambda chunk: _readout_first_order(score_fn, terms_op, chunk, self.k, self.row_sharding)
        total, per_term, energy = _run_chunks(fn, _host(vectors), size, self.mesh)
        result = dict(zip(TopK._fields, total))
        result.update({"layer_" + field: value for field, value in zip(TopK._fields, per_term)})
        return result | {"layer_energy": energy}


def _host(vectors):
    """Vectors as something sliceable on the host: `FeatureRows` as they are (read per chunk)."""
    return vectors if isinstance(vectors, FeatureRows) else sharding.to_host(vectors)
