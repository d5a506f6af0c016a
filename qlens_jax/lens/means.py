"""Per-feature transport means over a whole sample, and the context statistic from them."""

from __future__ import annotations

import numpy as np

from qlens_jax.lens import per_feature
from qlens_jax.lens.chunks import iter_token_chunks
from qlens_jax.lens.points import n_key_points
from qlens_jax.progress import progress


def per_feature_means(plan, side: str, vectors, points, quiet: bool):
    """Mean transported vector `[n, d]` and mean squared norm `[n]` per feature over the
    plan's sample (one linearized pass per feature, token chunk by token chunk)."""
    model, chunks = plan.model, plan.chunks
    total, total_sq = 0.0, 0.0
    token_chunks = list(iter_token_chunks(plan.tokens, plan.mask, chunks.sequences_per_chunk))
    needs_norms = bool((np.asarray(points) >= n_key_points(model.config.n_layers)).any())
    for chunk_tokens, chunk_mask in progress(token_chunks, desc=f"per-feature {side}", quiet=quiet, unit="chunk"):
        if side == "value":
            s, sq = per_feature.value_chunk(model, chunk_tokens, chunk_mask, vectors, points, chunks.tangent_chunk)
        else:
            s, sq = per_feature.key_chunk(model, chunk_tokens, chunk_mask, vectors, points, chunks.tangent_chunk, needs_norms)
        total, total_sq = total + s, total_sq + sq
    n = float(plan.mask.sum())
    return total / n, total_sq / n


def relative_variance(mean, mean_sq) -> np.ndarray:
    """`E||g - mean g||^2 / E||g||^2 = 1 - ||mean g||^2 / E||g||^2` per feature (0 where g = 0)."""
    mean_sq = np.asarray(mean_sq)
    return np.where(mean_sq > 0, 1.0 - (np.asarray(mean) ** 2).sum(-1) / np.where(mean_sq > 0, mean_sq, 1.0), 0.0)
