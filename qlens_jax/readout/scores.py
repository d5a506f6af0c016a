"""Vocabulary scores of feature vectors: the value readout, the key readouts and the logit lens.

Value side: `LN_final(m) W_U + b` (the final norm applied to the vector as a function, then the
unembedding). Key side: `E k` with `E` the centered, row-normalized embedding matrix (the
query lens) or the plain `W_E` (logit lens). The secant baselines' mean differences of
final-norm outputs are read by the unembedding alone, with the same `dot_scores`.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from qlens_jax.models import Transformer, layers


def value_scores(
    model: Transformer, vectors: Float[Array, "n d"], remove_final_norm_bias: bool = False
) -> Float[Array, "n vocab"]:
    """`W_U^T LN_final(m)`: the final norm applied to the vector as a function, then the unembedding.

    `remove_final_norm_bias` drops LayerNorm's bias, a feature-independent term.
    """
    norm = model.final_norm
    if remove_final_norm_bias and norm.bias is not None:
        norm = eqx.tree_at(lambda n: n.bias, norm, replace_fn=jnp.zeros_like)
    normed = norm(vectors.astype(model.embed_tokens.dtype))
    logits = jnp.matmul(normed, model.W_U, preferred_element_type=jnp.float32)
    return layers.softcap(logits, model.config.final_logit_softcap)


def centered_embeddings(
    model: Transformer, tokens: Int[Array, "b s"], mask: Bool[Array, "b s"]
) -> Float[Array, "vocab d"]:
    """`(e_t - c) / ||e_t - c||` with `c` the mean embedding row over the sample's valid tokens
    (frequency weighted, the reference's single centre)."""
    W_E = model.W_E.astype(jnp.float32)
    counts = (
        jnp.zeros(W_E.shape[0], jnp.float32)
        .at[jnp.asarray(tokens).reshape(-1)]
        .add(jnp.asarray(mask, jnp.float32).reshape(-1))
    )
    centre = counts @ W_E / counts.sum()
    centred = W_E - centre
    norms = jnp.linalg.norm(centred, axis=-1, keepdims=True)
    return centred / jnp.where(norms > 0, norms, 1.0)


def dot_scores(matrix: Float[Array, "vocab d"], vectors: Float[Array, "n d"]) -> Float[Array, "n vocab"]:
    """`vectors @ matrix.T` (key readouts: centered cosine, or Logit Lens's plain `W_E k`)."""
    return jnp.matmul(vectors.astype(matrix.dtype), matrix.T, preferred_element_type=jnp.float32)


def transported(op: Float[Array, "d w"] | None, vectors: Float[Array, "n w"]) -> Float[Array, "n d"]:
    """`vectors @ op.T` in float32 (a transport operator's rows applied to feature vectors), or
    `vectors` as they are when `op` is None."""
    return vectors if op is None else jnp.matmul(vectors, op.T.astype(jnp.float32))


def transported_value_scores(
    model: Transformer, remove_final_norm_bias: bool, op: Float[Array, "d w"] | None, vectors: Float[Array, "n w"]
) -> Float[Array, "n vocab"]:
    """`value_scores` of the `transported` vectors (arguments ordered for `eqx.Partial`)."""
    return value_scores(model, transported(op, vectors), remove_final_norm_bias)


def transported_dot_scores(
    matrix: Float[Array, "vocab d"], op: Float[Array, "d w"] | None, vectors: Float[Array, "n w"]
) -> Float[Array, "n vocab"]:
    """`dot_scores` of the `transported` vectors (arguments ordered for `eqx.Partial`)."""
    return dot_scores(matrix, transported(op, vectors))


def value_score_fn(
    model: Transformer, remove_final_norm_bias: bool = False, op: Float[Array, "d w"] | None = None
) -> eqx.Partial:
    """The value readout as a function of feature vectors `[n, d] -> [n, vocab]`, a pytree
    (its weights are traced, not baked in) for the jitted chunk programs."""
    return eqx.Partial(transported_value_scores, model, remove_final_norm_bias, op)


def key_score_fn(matrix: Float[Array, "vocab d"], op: Float[Array, "d w"] | None = None) -> eqx.Partial:
    """A key readout (`centered_embeddings`, or `W_E` for the logit lens) as a function of
    feature vectors `[n, d] -> [n, vocab]`, a pytree like `value_score_fn`."""
    return eqx.Partial(transported_dot_scores, matrix, op)


def unembedding_scores(model: Transformer, vectors: Float[Array, "n d"]) -> Float[Array, "n vocab"]:
    """`vectors @ W_U` in float32, with no final norm: the logits of vectors that already are
    final-norm outputs (the secant baselines' mean differences), read like a key (`dot_scores`)."""
    return dot_scores(model.W_U.T.astype(jnp.float32), vectors)


def unembedding_score_fn(model: Transformer) -> eqx.Partial:
    """`unembedding_scores` as a function of vectors `[n, d] -> [n, vocab]`, a pytree like `value_score_fn`."""
    return eqx.Partial(unembedding_scores, model)


def identity_scores(scores: Float[Array, "n vocab"]) -> Float[Array, "n vocab"]:
    """Rows that already are vocabulary scores (the secant baselines' mean logit differences)."""
    return scores
