"""Sparse activation functions, as pure functions of the pre-activation.

Each one reproduces the format owner's definition exactly (tie-breaking aside), because the
reconstructions they give are compared against the owners' code to 1e-5. All act on the last
axis and accept any leading batch shape.
"""

import math

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float

ACTIVATIONS = ("relu", "jumprelu", "topk", "abstopk", "groupmax", "gated", "mlp")
"""Names accepted by `Dictionary.activation` ("mlp": a model's own MLP neurons, `mlp_activation`)."""


def relu(pre: Float[Array, "*batch d_sae"]) -> Float[Array, "*batch d_sae"]:
    """ReLU: the standard SAE activation."""
    return jnp.maximum(pre, 0)


def jumprelu(
    pre: Float[Array, "*batch d_sae"],
    threshold: Float[Array, " d_sae"],
    rectify: bool = True,
) -> Float[Array, "*batch d_sae"]:
    """JumpReLU with per-feature thresholds: keep `pre` where `pre > threshold`.

    `rectify=True` is sae_lens / Gemma Scope (`relu(pre) * (pre > threshold)`, so a negative
    threshold never lets a negative value through); `rectify=False` is circuit-tracer's
    `pre * (pre > threshold)`. The two agree whenever every threshold is >= 0.
    """
    kept = relu(pre) if rectify else pre
    return kept * (pre > threshold).astype(pre.dtype)


def _scatter_last(like: Float[Array, "*batch d_sae"], indices: Array, values: Array) -> Float[Array, "*batch d_sae"]:
    """Zeros shaped like `like` with `values` placed at `indices` along the last axis."""
    return jnp.put_along_axis(jnp.zeros_like(like), indices, values, axis=-1, inplace=False)


def topk(pre: Float[Array, "*batch d_sae"], k: int, rectify: bool = True) -> Float[Array, "*batch d_sae"]:
    """Keep the `k` largest pre-activations per example, zero the rest.

    `rectify=True` applies a ReLU to the kept values (sae_lens `TopK`, OpenAI
    `TopK(postact_fn=ReLU)`, and sparsify, whose ReLU-then-top-k gives the same vector);
    `rectify=False` keeps them signed (circuit-tracer's `TopK`, OpenAI `postact_fn=Identity`).
    The selection runs in float32.
    """
    values, indices = jax.lax.top_k(pre.astype(jnp.float32), k)
    values = values.astype(pre.dtype)
    return _scatter_last(pre, indices, relu(values) if rectify else values)


def abstopk(pre: Float[Array, "*batch d_sae"], k: int) -> Float[Array, "*batch d_sae"]:
    """sae_lens `AbsTopK`: keep the `k` pre-activations of largest magnitude, with their sign."""
    _, indices = jax.lax.top_k(jnp.abs(pre.astype(jnp.float32)), k)
    return _scatter_last(pre, indices, jnp.take_along_axis(pre, indices, axis=-1))


def groupmax(pre: Float[Array, "*batch d_sae"], k: int) -> Float[Array, "*batch d_sae"]:
    """sparsify `groupmax`: ReLU, split the features into `k` contiguous groups, keep each max."""
    acts = relu(pre)
    *batch, d_sae = acts.shape
    groups = acts.reshape(*batch, k, d_sae // k)
    winner = jnp.argmax(groups, axis=-1)
    offsets = jnp.arange(k) * (d_sae // k)
    indices = winner + offsets
    return _scatter_last(acts, indices, jnp.max(groups, axis=-1))


def batch_topk(pre: Float[ArrayLike, "*batch d_sae"], k: float) -> Float[Array, "*batch d_sae"]:
    """BatchTopK (sae_lens `BatchTopK`, training only): ReLU, then keep the
    `int(k * n_examples)` largest values across the whole batch, not per example.

    Released BatchTopK dictionaries are not run this way: their owners save them as JumpReLU
    with the global threshold learned in training, so a `Dictionary` never uses this (its
    output would depend on what else is in the batch). Kept for checking training code.
    """
    acts = relu(jnp.asarray(pre))
    n_examples = math.prod(acts.shape[:-1])
    flat = acts.reshape(-1)
    values, indices = jax.lax.top_k(flat.astype(jnp.float32), int(k * n_examples))
    return jnp.zeros_like(flat).at[indices].set(values.astype(flat.dtype)).reshape(acts.shape)


def gated(
    gate_pre: Float[Array, "*batch d_sae"], magnitude_pre: Float[Array, "*batch d_sae"]
) -> Float[Array, "*batch d_sae"]:
    """Gated SAE (sae_lens `GatedSAE`): `(gate_pre > 0) * relu(magnitude_pre)`."""
    active: Bool[Array, "*batch d_sae"] = gate_pre > 0
    return active.astype(magnitude_pre.dtype) * relu(magnitude_pre)
