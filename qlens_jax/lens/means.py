"""Per-feature transport means over a whole sample, and the context statistic from them."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from qlens_jax.lens import partial_transport, per_feature
from qlens_jax.lens.chunks import iter_token_chunks
from qlens_jax.lens.points import MODULE_OUTPUT_SITES, Point, n_key_points, row
from qlens_jax.progress import progress


def per_feature_means(plan, side: str, vectors, point: Point, quiet: bool):
    """Mean transported vector `[n, d]` and mean squared norm `[n]` per feature over the
    plan's sample (one linearized pass per feature, token chunk by token chunk), every vector
    transported from `point` (the write point on the value side, the read point on the key side)
    over only the blocks it passes where `partial_transport.covers` it."""
    model, chunks = plan.transport_model(side), plan.chunks
    n_layers = model.config.n_layers
    shortened = partial_transport.covers(point, side, n_layers, model.config.parallel_residual)
    total, total_sq = 0.0, 0.0
    token_chunks = list(iter_token_chunks(plan.tokens, plan.mask, chunks.sequences_per_chunk))
    rows = None if point.site in MODULE_OUTPUT_SITES else jnp.full(len(vectors), row(point, n_layers))
    for chunk_tokens, chunk_mask in progress(token_chunks, desc=f"per-feature {side}", quiet=quiet, unit="chunk"):
        args = (model, jnp.asarray(chunk_tokens), jnp.asarray(chunk_mask), vectors)
        if shortened:
            s, sq = partial_transport.chunk_sums(*args, side, point, chunks.tangent_chunk)
        elif side == "value" and point.site == "z":
            s, sq = per_feature.z_value_chunk(*args, point.layer, chunks.tangent_chunk)
        elif side == "value":
            assert rows is not None  # value points other than `z` lie on the residual stream
            s, sq = per_feature.value_chunk(*args, rows, chunks.tangent_chunk)
        elif rows is None:
            s, sq = per_feature.site_key_chunk(*args, point, chunks.tangent_chunk)
        else:
            needs_norms = row(point, n_layers) >= n_key_points(n_layers)
            s, sq = per_feature.key_chunk(*args, rows, chunks.tangent_chunk, needs_norms)
        total, total_sq = total + s, total_sq + sq
    n = float(plan.mask.sum())
    return total / n, total_sq / n


def relative_variance(mean, mean_sq) -> np.ndarray:
    """`E||g - mean g||^2 / E||g||^2 = 1 - ||mean g||^2 / E||g||^2` per feature (0 where g = 0)."""
    mean_sq = np.asarray(mean_sq)
    return np.where(mean_sq > 0, 1.0 - (np.asarray(mean) ** 2).sum(-1) / np.where(mean_sq > 0, mean_sq, 1.0), 0.0)
