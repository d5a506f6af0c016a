"""Exact `lax.top_k` over a long last axis (the vocabulary readout), in two stages.

On CPU `lax.top_k` over `[n, vocab]` scores costs nearly as much as the GEMM making them. Here
the row is cut into groups of `GROUP` consecutive entries: a windowed max (one pass over the
scores) ranks the groups, and `lax.top_k` runs only over the entries of the `k` groups with
the largest maxima (ties to the lower group). Those hold every top-k entry: an entry of any
other group ranks below each of these groups' best entries. The candidates stay in
vocabulary order, so the result, ties included (lower index first), is exactly `lax.top_k`'s.

`lax.top_k` ranks floats in total order (-0 below +0, NaN past the infinities); a max does
not (and takes denormals for zero on CPU). The two choose the same groups unless the `k`-th
largest group maximum is zero or denormal, or some maximum is NaN: a call where that happens
(all-zero padding rows, say) falls back to `lax.top_k` over the whole rows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

GROUP = 64


class TopK(NamedTuple):
    """The best and worst `k` tokens of each row, best first (`bottom_scores` ascending)."""

    top_ids: Int[Array, "n k"]
    top_scores: Float[Array, "n k"]
    bottom_ids: Int[Array, "n k"]
    bottom_scores: Float[Array, "n k"]


def top_k(
    x: Float[Array, "n vocab"], k: int, negate: bool = False, group: int = GROUP
) -> tuple[Float[Array, "n k"], Int[Array, "n k"]]:
    """`jax.lax.top_k(-x if negate else x, k)`: the same values and ids, in the same order.
    `negate` (the bottom `k`, negated) spares a negated copy of `x`."""
    n, vocab = x.shape
    signed = (lambda a: -a) if negate else (lambda a: a)

    def whole():
        values, ids = jax.lax.top_k(signed(x), k)  # a list from the primitive; a pair here
        return values, ids

    if vocab <= k * group:
        return whole()
    padding = ((0, 0), (0, -vocab % group))
    # the bottom side's group maxima as negated minima: no negated copy of `x`
    reduce, init = (jax.lax.min, jnp.inf) if negate else (jax.lax.max, -jnp.inf)
    maxima = signed(jax.lax.reduce_window(x, init, reduce, (1, group), (1, group), padding))
    best, groups = jax.lax.top_k(maxima, k)

    def candidates():
        starts = jnp.sort(groups, axis=1)[:, :, None] * group
        ids = (starts + jnp.arange(group, dtype=groups.dtype)).reshape(n, k * group)
        values = signed(jnp.take_along_axis(x, jnp.minimum(ids, vocab - 1), axis=1))
        values, pick = jax.lax.top_k(jnp.where(ids < vocab, values, -jnp.inf), k)
        return values, jnp.take_along_axis(ids, pick, axis=1)

    # `best.min`, not `best[:, -1]`: XLA would turn that top_k into a sort of the whole rows
    kth = best.min(axis=1)
    exact = jnp.all(jnp.abs(kth) >= jnp.finfo(x.dtype).smallest_normal) & ~jnp.isnan(maxima).any()
    return jax.lax.cond(exact, candidates, whole)


def top_and_bottom(scores: Float[Array, "n vocab"], k: int) -> TopK:
    """The top `k` and bottom `k` entries of each row (ids and scores), by `top_k`."""
    top_scores, top_ids = top_k(scores, k)
    neg, bottom_ids = top_k(scores, k, negate=True)
    return TopK(top_ids, top_scores, bottom_ids, -neg)
