"""Readouts: transported vectors -> vocabulary scores -> top-k and bottom-k, chunked over features.

The readout is the floor of the whole job (`n_features x d_model x vocab` multiply-adds per
side and layer), so it runs as one GEMM per feature chunk with an on-device top-k; the
`n_features x vocab` score matrix is never materialized (DESIGN.md section 2).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from qlens_jax.models import Transformer
from qlens_jax.models import layers


class TopK(NamedTuple):
    top_ids: Int[Array, "n k"]
    top_scores: Float[Array, "n k"]
    bottom_ids: Int[Array, "n k"]
    bottom_scores: Float[Array, "n k"]


def value_scores(model: Transformer, vectors: Float[Array, "n d"], remove_final_norm_bias: bool = False) -> Float[Array, "n vocab"]:
    """`W_U^T LN_final(m)`: the final norm applied to the vector as a function, then the unembedding.

    `remove_final_norm_bias` drops LayerNorm's bias, a feature-independent term.
    """
    norm = model.final_norm
    if remove_final_norm_bias and norm.bias is not None:
        norm = eqx.tree_at(lambda n: n.bias, norm, replace_fn=jnp.zeros_like)
    normed = norm(vectors.astype(model.embed_tokens.dtype))
    logits = jnp.matmul(normed, model.W_U, preferred_element_type=jnp.float32)
    return layers.softcap(logits, model.config.final_logit_softcap)


def centered_embeddings(model: Transformer, tokens: Int[Array, "b s"], mask: Bool[Array, "b s"]) -> Float[Array, "vocab d"]:
    """`(e_t - c) / ||e_t - c||` with `c` the mean embedding row over the sample's valid tokens
    (frequency weighted, the reference's single centre)."""
    W_E = model.W_E.astype(jnp.float32)
    counts = jnp.zeros(W_E.shape[0], jnp.float32).at[jnp.asarray(tokens).reshape(-1)].add(jnp.asarray(mask, jnp.float32).reshape(-1))
    centre = counts @ W_E / counts.sum()
    centred = W_E - centre
    norms = jnp.linalg.norm(centred, axis=-1, keepdims=True)
    return centred / jnp.where(norms > 0, norms, 1.0)


def dot_scores(matrix: Float[Array, "vocab d"], vectors: Float[Array, "n d"]) -> Float[Array, "n vocab"]:
    """`vectors @ matrix.T` (key readouts: centered cosine, or Logit Lens's plain `W_E k`)."""
    return jnp.matmul(vectors.astype(matrix.dtype), matrix.T, preferred_element_type=jnp.float32)


def feature_chunk_for(vocab: int, budget_bytes: float) -> int:
    """Features per readout chunk so that a chunk's scores (and top-k work) fit the budget."""
    return int(max(1, min(4096, budget_bytes // (vocab * 4 * 3))))
