"""Top-k / bottom-k of baseline scores, chunked over features, on device.

Secant baselines yield per feature a difference of mean final-norm outputs (scores
`diff @ W_U`) or, for soft-capped models, a difference of mean logits (the scores
themselves). Either way the `n_features x vocab` score matrix exists only one chunk at a time.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from qlens_jax.lens.readout import TopK
from qlens_jax.lens.topk import top_k


def _top_and_bottom(scores: Float[Array, "n vocab"], k: int) -> TopK:
    top_scores, top_ids = top_k(scores, k)
    neg, bottom_ids = top_k(scores, k, negate=True)
    return TopK(top_ids, top_scores, bottom_ids, -neg)


@eqx.filter_jit
def _topk_chunks(unembedding: Float[Array, "d vocab"] | None, chunks: Float[Array, "c n D"], k: int) -> TopK:
    def one(chunk):
        scores = chunk if unembedding is None else jnp.matmul(chunk, unembedding.astype(jnp.float32))
        return _top_and_bottom(scores, k)

    return jax.lax.map(one, chunks)


def topk_of_differences(
    vectors: Float[Array, "n D"], unembedding: Float[Array, "d vocab"] | None, k: int, feature_chunk: int
) -> dict[str, np.ndarray]:
    """Top/bottom-k ids and scores of `vectors @ unembedding` (or of `vectors` when None)."""
    vectors = jnp.asarray(vectors, jnp.float32)
    n = vectors.shape[0]
    size = max(1, min(feature_chunk, n))
    padded = -(-n // size) * size
    if padded > n:
        vectors = jnp.concatenate([vectors, jnp.zeros((padded - n, vectors.shape[1]), vectors.dtype)])
    result = _topk_chunks(unembedding, vectors.reshape(padded // size, size, -1), k)
    return {name: np.asarray(a).reshape(padded, k)[:n] for name, a in zip(TopK._fields, result)}
