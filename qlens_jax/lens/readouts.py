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


def _chunked(x: Float[np.ndarray, "n *rest"], size: int, mesh: Mesh | None) -> tuple[jax.Array, int]:
    """`[chunks, size, ...]` with zero rows padding the last chunk; on a mesh, each chunk's
    rows are split over all devices (the `features` logical axis)."""
    n = x.shape[0]
    devices = 1 if mesh is None else sharding.axis_size(mesh, "features")
    size = max(1, min(size, n))
    size = -(-size // devices) * devices
    padded = -(-n // size) * size
    x = np.concatenate([x, np.zeros((padded - n, *x.shape[1:]), x.dtype)]) if padded > n else x
    x = x.reshape(padded // size, size, *x.shape[1:])
    if mesh is None:
        return jnp.asarray(x), n
    return sharding.put(x, mesh, None, "features", *([None] * (x.ndim - 2))), n


def _unchunk(a, n):
    a = sharding.to_host(a)
    return a.reshape(-1, *a.shape[2:])[:n]


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
        chunks, n = _chunked(sharding.to_host(vectors).astype(np.float32), self.feature_chunk, self.mesh)
        out = _readout(self.score_fn(side, op, logit_lens), chunks, self.k, self.row_sharding)
        return dict(zip(TopK._fields, (_unchunk(a, n) for a in out)))

    def read_first_order(self, side: str, vectors, terms_op) -> dict:
        """Total and per-term signatures and energies; `vectors` are raw `[n, d]` with
        `terms_op [T, d, d]`, or already transported terms `[n, T, d]` with `terms_op=None`."""
        size = max(1, self.feature_chunk // (1 + (terms_op.shape[0] if terms_op is not None else vectors.shape[1])))
        chunks, n = _chunked(sharding.to_host(vectors).astype(np.float32), size, self.mesh)
        total, per_term, energy = _readout_first_order(self.score_fn(side), terms_op, chunks, self.k, self.row_sharding)
        result = dict(zip(TopK._fields, (_unchunk(a, n) for a in total)))
        for field, array in zip(TopK._fields, per_term):
            result["layer_" + field] = _unchunk(array, n)
        result["layer_energy"] = _unchunk(energy, n)
        return result
