"""Routing of routed experts (mixture-of-experts MLPs: Qwen3-MoE, gpt-oss) as transformers computes it; the module
is `qlens_jax.models.mlp.RoutedMLP`.

A router scores every expert at each position, the `k` best are chosen and weighted, and the
MLP's output is the weighted sum of the chosen experts' outputs (the "routed sum", the
`mlp_out` site). The choice is piecewise constant in the input, so a function written as
"every expert, weighted by a routing weight that is exactly zero for the experts not chosen"
is the model's function and has its derivative: the top-k mask does not move under an
infinitesimal perturbation, while the chosen experts' weights are differentiated through the
router (docs/definitions.md section 1c). That is how `RoutedMLP` computes, so `jax.jvp` / `jax.vjp` of
the forward pass are the linearization the kernel needs, with nothing special in the sweeps.

Cost: every expert runs at every position (`n_experts / experts_per_token` times the
arithmetic of the chosen ones, 16x for Qwen3-30B-A3B), in exchange for one batched product
per projection and no gathered `[tokens, k, d_model, d_mlp]` weights. The Jacobian at one
position (`RoutedMLP.jacobian`, for the block-major sweeps) gathers the `k` chosen experts
instead: it costs what a dense gated MLP of width `k x d_mlp` costs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from qlens_jax.models import layers


def top_k_mask(scores: Float[Array, "*batch experts"], k: int) -> Bool[Array, "*batch experts"]:
    """Which `k` experts score highest at each position (ties: the lower index, as
    `torch.topk` on CPU). Integer-valued, so it carries no derivative."""
    _, chosen = jax.lax.top_k(jax.lax.stop_gradient(scores), k)
    return jax.nn.one_hot(chosen, scores.shape[-1], dtype=jnp.bool_).any(-2)


def routing_weights(
    logits: Float[Array, "*batch experts"], k: int, router: str, renormalize: bool
) -> Float[Array, "*batch experts"]:
    """Each expert's weight at each position, exactly 0 for the experts not chosen.

    `softmax_topk` (Qwen3-MoE): softmax over every expert in float32, the `k` largest
    probabilities kept and, with `renormalize` (`norm_topk_prob`), rescaled to sum to 1.
    `topk_softmax` (gpt-oss): the `k` largest logits, softmax over those `k` only (the weights
    sum to 1 by construction; `renormalize` does not apply).
    """
    wide = logits.astype(layers.compute_dtype(logits.dtype))
    if router == "topk_softmax":
        chosen = top_k_mask(wide, k)
        weights = jax.nn.softmax(jnp.where(chosen, wide, -jnp.inf), axis=-1)
        return jnp.where(chosen, weights, 0.0).astype(logits.dtype)
    if router != "softmax_topk":
        raise ValueError(f"unknown router {router!r}")
    probs = jax.nn.softmax(wide, axis=-1)
    weights = jnp.where(top_k_mask(probs, k), probs, 0.0)
    if renormalize:
        weights = weights / weights.sum(-1, keepdims=True)
    return weights.astype(logits.dtype)
