"""The jitted readout of stacked feature chunks: scores, then top-k on device, per chunk.

`n_features x vocab` scores exist one chunk at a time (`lax.map`); only the top-k lists leave
the program. Chunk inputs are not donated: no output has a chunk's shape, so XLA could not
reuse its buffer, and JAX warns ("Some donated buffers were not usable") on every backend.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from qlens_jax.readout.sharded import Layout
from qlens_jax.readout.topk import TopK

ScoreFn = Callable[[Float[Array, "n d"]], Float[Array, "n vocab"]]


@eqx.filter_jit
def readout_chunks(score_fn: ScoreFn, chunks: Float[Array, "c n d"], k: int, layout: Layout) -> TopK:
    """Top and bottom `k` tokens of every row of every chunk under `score_fn` (`[c, n, k]` each)."""

    def one(chunk):
        scores = layout.scores(score_fn(layout.rows(chunk)))
        return TopK(*map(layout.rows, layout.topk(scores, k)))

    return jax.lax.map(one, chunks)


@eqx.filter_jit
def first_order_chunks(
    score_fn: ScoreFn, terms_op: Float[Array, "T d w"] | None, chunks: Float[Array, "c n *rest"], k: int, layout: Layout
) -> tuple[TopK, TopK, Float[Array, "c n T"]]:
    """Per chunk: the top/bottom `k` of the total of a feature's first-order terms, of each term
    (`[c, n, T, k]`), and each term's energy `<m_t, m> / <m, m>`. Rows are raw vectors `[n, d]`
    with `terms_op [T, d, d]`, or already transported terms `[n, T, d]` with `terms_op` None."""

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
