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
from qlens_jax.lens.topk import top_k
from qlens_jax.models import Transformer
from qlens_jax.numerics import applies_precision


def _transported(op, x):
    return x if op is None else jnp.matmul(x, op.T.astype(jnp.float32))


def _value_score(model, remove_bias, op, x):
    return value_scores(model, _transported(op, x), remove_bias)


def _key_score(matrix, op, x):
    return dot_scores(matrix, _transported(op, x))


def _topk(scores: Float[Array, "n vocab"], k: int) -> TopK:
    top_scores, top_ids = top_k(scores, k)
    neg, bottom_ids = top_k(scores, k, negate=True)
    return TopK(top_ids, top_scores, bottom_ids, -neg)


def _split_topk(scores: Float[Array, "n vocab"], k: int, vocab_size: int, mesh: Mesh, row_axis: str) -> TopK:
    """`_topk` of scores whose vocabulary axis is split over the mesh's `vocab` axes (rows over
    `row_axis`): each device keeps the best `k` of its slice (padding columns past `vocab_size`
    excluded), the candidates are all-gathered and a final top-k picks among them. Candidates
    arrive in vocabulary order and `top_k` keeps equal values in order, so ties resolve to the
    lower token id exactly as one `top_k` over the whole vocabulary does."""
    vocab = sharding.LOGICAL["vocab"]

    def local(block):
        width = block.shape[-1]
        offset = jax.lax.axis_index(vocab) * width
        valid = offset + jnp.arange(width) < vocab_size

        def best(negate: bool):
            values, ids = top_k(jnp.where(valid, block, jnp.inf if negate else -jnp.inf), min(k, width), negate)
            values = jax.lax.all_gather(values, vocab, axis=1, tiled=True)
            ids = jax.lax.all_gather(ids + offset, vocab, axis=1, tiled=True)
            values, pick = jax.lax.top_k(values, k)
            return values, jnp.take_along_axis(ids, pick, axis=1)

        (top, top_ids), (neg, bottom_ids) = best(False), best(True)
        return TopK(top_ids, top, bottom_ids, -neg)

    rows = sharding.spec(row_axis, None)
    # check_vma=False: the merged lists are the same on every `vocab` device (all-gathered
    # candidates), which the replication check does not infer through `top_k`.
    split = jax.shard_map(local, mesh=mesh, in_specs=sharding.spec(row_axis, "vocab"), out_specs=TopK(*[rows] * 4), check_vma=False)
    return split(scores)


def _rowwise_topk(scores: Float[Array, "n vocab"], k: int, vocab_size: int, mesh: Mesh, row_axis: str) -> TopK:
    """`_topk` of each device's own rows. Left to XLA's partitioner, the scores would be
    all-gathered before its TopK: every device would hold and rank every row of the chunk."""
    rows = sharding.spec(row_axis, None)
    local = lambda block: _topk(block[:, :vocab_size], k)
    return jax.shard_map(local, mesh=mesh, in_specs=rows, out_specs=TopK(*[rows] * 4))(scores)


@dataclass(frozen=True)
class Layout:
    """Where a readout chunk lies (static under `jit`). On one device (`mesh` None); feature
    rows over every device, each scoring the whole vocabulary (replicated weights); or, when the
    weights' vocabulary is split over the mesh (`split_vocab`, `sharding.shard_weights`),
    rows over the remaining axes, each device scoring its vocabulary slice."""

    vocab_size: int
    mesh: Mesh | None = None
    split_vocab: bool = False

    @property
    def row_axis(self) -> str:
        return "vocab_features" if self.split_vocab else "features"

    def _constrain(self, x: Array, *logical: str | None) -> Array:
        return x if self.mesh is None else jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, sharding.spec(*logical)))

    def rows(self, x: Array) -> Array:
        """`x` with its leading (feature row) axis kept split over the mesh, the rest whole."""
        return self._constrain(x, self.row_axis, *[None] * (x.ndim - 1))

    def scores(self, x: Float[Array, "n vocab"]) -> Float[Array, "n vocab"]:
        """Scores with rows split over the mesh, and the vocabulary too when it is split."""
        return self._constrain(x, self.row_axis, "vocab" if self.split_vocab else None)

    def topk(self, scores: Float[Array, "n vocab"], k: int) -> TopK:
        """Top and bottom `k` over the real vocabulary (sharded weights pad it to a multiple of the mesh)."""
        if self.split_vocab:
            return _split_topk(scores, k, self.vocab_size, self.mesh, self.row_axis)
        if self.mesh is not None:
            return _rowwise_topk(scores, k, self.vocab_size, self.mesh, self.row_axis)
        return _topk(scores[:, : self.vocab_size], k)


@eqx.filter_jit
def _readout(score_fn, chunks, k: int, layout: Layout) -> TopK:
    def one(chunk):
        scores = layout.scores(score_fn(layout.rows(chunk)))
        return TopK(*map(layout.rows, layout.topk(scores, k)))

    return jax.lax.map(one, chunks)


@eqx.filter_jit
def _readout_first_order(score_fn, terms_op, chunks, k: int, layout: Layout):
    def one(chunk):
        chunk = layout.rows(chunk)
        terms = chunk if terms_op is None else jnp.einsum("nd,tid->nti", chunk, terms_op)
        total = terms.sum(1)
        energy = jnp.einsum("ntd,nd->nt", terms, total) / jnp.maximum((total * total).sum(-1), 1e-30)[:, None]
        n, t, d = terms.shape
        per_term = layout.topk(layout.scores(score_fn(terms.reshape(n * t, d))), k)
        per_term = TopK(*(a.reshape(n, t, k) for a in per_term))
        return layout.topk(layout.scores(score_fn(total)), k), per_term, energy

    return jax.lax.map(one, chunks)


def _chunk_size(size: int, n: int, mesh: Mesh | None) -> int:
    """Rows per chunk: `size` rows per device (the budget is per device), at most the `n`
    rows there are, rounded up to split evenly over the devices."""
    devices = 1 if mesh is None else sharding.axis_size(mesh, "features")
    size = max(1, min(size * devices, n))
    return -(-size // devices) * devices


def _place(x: np.ndarray, layout: Layout) -> jax.Array:
    """One chunk on device(s); on a mesh its rows are split over the layout's row axes."""
    if layout.mesh is None:
        return jnp.asarray(x)
    return sharding.put(x, layout.mesh, None, layout.row_axis, *([None] * (x.ndim - 2)))


def _chunked(x: Float[np.ndarray, "n *rest"], size: int, layout: Layout) -> tuple[jax.Array, int]:
    """All of `x` as `[chunks, size, ...]` (zero rows pad the last chunk), for small inputs."""
    n = x.shape[0]
    size = _chunk_size(size, n, layout.mesh)
    padded = -(-n // size) * size
    x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)]) if padded > n else x
    return _place(x.reshape(padded // size, size, *x.shape[1:]), layout), n


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


def _iter_chunks(x, size: int, layout: Layout):
    """`[1, size, ...]` device chunks of `x`, one at a time: only a chunk is ever copied, so the
    readout's memory is the dictionary plus chunk buffers, whatever the number of features."""
    n = len(x)
    size = _chunk_size(size, n, layout.mesh)
    for start in range(0, n, size):
        chunk = np.asarray(x[start : start + size], np.float32)
        if chunk.shape[0] < size:
            chunk = np.concatenate([chunk, np.zeros((size - chunk.shape[0], *chunk.shape[1:]), np.float32)])
        yield _place(chunk[None], layout), min(size, n - start)


def _run_chunks(fn, x: "np.ndarray | FeatureRows", size: int, layout: Layout):
    """`fn(chunk)` for every chunk, as host arrays with one row per row of `x` (the tree of
    `fn`'s outputs). At most two chunks are in flight: without this, asynchronous dispatch
    would queue every chunk's input at once. Each chunk's results are copied into the output
    as they arrive, so they are held once (not as pieces and then their concatenation)."""
    out, pending = _Rows(len(x)), None
    for chunk, count in _iter_chunks(x, size, layout):
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
    """What readouts need: the model (value side), the centered embedding matrix (key side).

    With a `mesh`, feature rows are split over it; if the model's weights are sharded
    (`sharding.shard_weights`), the vocabulary is split too (`Layout`): `key_matrix` should
    then be split like `W_E` (`sharding.spec("vocab", None)`)."""

    model: Transformer
    key_matrix: Float[Array, "vocab d"]
    remove_final_norm_bias: bool
    k: int
    feature_chunk: int
    mesh: Mesh | None = None

    @property
    def layout(self) -> Layout:
        split = self.mesh is not None and sharding.vocab_sharded(self.model)
        return Layout(self.model.config.vocab_size, self.mesh, split)

    def score_fn(self, side: str, op=None, logit_lens: bool = False):
        if side == "value":
            return eqx.Partial(_value_score, self.model, self.remove_final_norm_bias, op)
        matrix = self.model.W_E if logit_lens else self.key_matrix
        return eqx.Partial(_key_score, matrix, op)

    @applies_precision
    def read(self, side: str, vectors, op=None, logit_lens: bool = False, precision: str = "float32") -> dict:
        """Top/bottom-k of `vectors @ op.T` (or `vectors`) under the side's readout (`precision`:
        `qlens_jax.numerics`; inside `query_lens`, its mode)."""
        score_fn = self.score_fn(side, op, logit_lens)
        layout = self.layout
        fn = lambda chunk: _readout(score_fn, chunk, self.k, layout)
        return dict(zip(TopK._fields, _run_chunks(fn, _host(vectors), self.feature_chunk, layout)))

    @applies_precision
    def read_first_order(self, side: str, vectors, terms_op, precision: str = "float32") -> dict:
        """Total and per-term signatures and energies; `vectors` are raw `[n, d]` with
        `terms_op [T, d, d]`, or already transported terms `[n, T, d]` with `terms_op=None`."""
        size = max(1, self.feature_chunk // (1 + (terms_op.shape[0] if terms_op is not None else vectors.shape[1])))
        score_fn = self.score_fn(side)
        layout = self.layout
        fn = lambda chunk: _readout_first_order(score_fn, terms_op, chunk, self.k, layout)
        total, per_term, energy = _run_chunks(fn, _host(vectors), size, layout)
        result = dict(zip(TopK._fields, total))
        result.update({"layer_" + field: value for field, value in zip(TopK._fields, per_term)})
        return result | {"layer_energy": energy}


def _host(vectors):
    """Vectors as something sliceable on the host: `FeatureRows` as they are (read per chunk)."""
    return vectors if isinstance(vectors, FeatureRows) else sharding.to_host(vectors)
