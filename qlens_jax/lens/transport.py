"""The linear maps Query Lens needs, as functions of perturbations of one token chunk.

Three functions of a token chunk `(tokens [b, s], mask [b, s])`, each linear in its
perturbation argument once linearized at the clean hidden states:

- `final_from_probes(deltas [P, d])`: the final residual when `deltas[p]` is added at every
  valid position of point `p`. Its JVP pushes a value vector forward from any point; its VJP
  with a cotangent at the top yields, in one pass, the position-summed cotangent at *every*
  point (the gradient with respect to a broadcast vector is the masked sum over positions).
- `points_from_embedding(delta0 [b, s, d])`: every residual point (and each MLP's normalized
  input) when `delta0` is added to `resid_pre[0]`. Its JVP pushes a tangent up from the
  embedding; its VJP pulls a key vector back from any point to the embedding.
- `module_outputs(deltas [2L, d])`: each residual module's output at its own clean input
  plus `deltas[m]` at every valid position: the single-hop (first-order) terms.

Masking: perturbations enter only at valid positions. Attention never lets a valid query
see a pad key and pads sit at the end (right padding), so pad positions never feed valid
ones; the transports equal the `t <- mask * (t + J t)` recursion of DESIGN.md at every valid
position, and every sum over positions is masked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from qlens_jax.dictionaries.normalization import input_stats, normalize
from qlens_jax.lens.points import INPUT_NORMS_WITH_JACOBIAN
from qlens_jax.models import Transformer, attention_residual, mlp_input, mlp_residual

_attention_batch = jax.vmap(attention_residual, in_axes=(None, None, 0, 0))


def _run(model: Transformer, tokens, mask, pre_deltas, mid_deltas, delta0):
    """Forward pass of a chunk with additive perturbations; returns all points."""
    # Perturbations are float32; they are broadcast and masked before the cast to the model
    # dtype, so that their transposes (sums over positions) accumulate in float32.
    m = mask[..., None].astype(jnp.float32)
    h = jax.vmap(model.embed)(tokens)
    dtype = h.dtype
    if delta0 is not None:
        h = h + (delta0 * m).astype(dtype)

    def step(h, xs):
        block, meta, d_pre, d_mid = xs
        pre = h + (d_pre * m).astype(dtype)
        mid = pre + _attention_batch(block, meta, pre, mask) + (d_mid * m).astype(dtype)
        post = mid + mlp_residual(block, mid)
        return post, (pre, mid, mlp_input(block, mid))

    final, (pres, mids, mlp_ins) = jax.lax.scan(step, h, (model.blocks, model.meta, pre_deltas, mid_deltas))
    return final, pres, mids, mlp_ins


def final_from_probes(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    deltas: Float[Array, "points d"],
) -> Float[Array, "b s d"]:
    """Final residual with `deltas[p]` added at every valid position of point `p`."""
    n_layers = model.config.n_layers
    final, *_ = _run(model, tokens, mask, deltas[0 : 2 * n_layers : 2][:, None, None], deltas[1 : 2 * n_layers : 2][:, None, None], None)
    return final + (deltas[2 * n_layers] * mask[..., None]).astype(final.dtype)


def points_from_embedding(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    delta0: Float[Array, "b s d"],
    with_input_norms: bool = False,
) -> Float[Array, "key_points b s d"]:
    """Every residual point and each MLP's normalized input, with `delta0` added at `resid_pre[0]`.

    Stacked in the order of `points`: pre/mid interleaved, final, mlp_in; with
    `with_input_norms`, then every residual point through each normalization of
    `points.INPUT_NORMS_WITH_JACOBIAN`, in that order.
    """
    n_layers, d = model.config.n_layers, model.config.d_model
    zeros = jnp.zeros((n_layers, 1, 1, d), jnp.float32)
    final, pres, mids, mlp_ins = _run(model, tokens, mask, zeros, zeros, delta0)
    interleaved = jnp.stack([pres, mids], axis=1).reshape(2 * n_layers, *final.shape)
    residual = jnp.concatenate([interleaved, final[None]], axis=0)
    extra = []
    if with_input_norms:
        for norm in INPUT_NORMS_WITH_JACOBIAN:
            extra.append(normalize(residual, input_stats(residual, norm)).astype(residual.dtype))
    return jnp.concatenate([residual, mlp_ins, *extra], axis=0)


def clean_states(model: Transformer, tokens, mask) -> tuple[Float[Array, "b s d"], Float[Array, "L b s d"], Float[Array, "L b s d"]]:
    """The clean final residual and every block's `resid_pre` and `resid_mid`."""
    n_layers, d = model.config.n_layers, model.config.d_model
    zeros = jnp.zeros((n_layers, 1, 1, d), jnp.float32)
    final, pres, mids, _ = _run(model, tokens, mask, zeros, zeros, None)
    return final, pres, mids


def clean_module_inputs(model: Transformer, tokens, mask) -> Float[Array, "modules b s d"]:
    """Each module's clean input: `resid_pre[b]` for attention `b`, `resid_mid[b]` for MLP `b`."""
    final, pres, mids = clean_states(model, tokens, mask)
    return jnp.stack([pres, mids], axis=1).reshape(2 * model.config.n_layers, *final.shape)


def module_outputs(
    model: Transformer,
    inputs: Float[Array, "modules b s d"],
    mask: Bool[Array, "b s"],
    deltas: Float[Array, "modules d"],
) -> Float[Array, "modules b s d"]:
    """Each module's output at its clean input plus `deltas[m]` at every valid position."""
    m = mask[..., None].astype(jnp.float32)
    n_layers = model.config.n_layers
    pairs = inputs.reshape(n_layers, 2, *inputs.shape[1:])
    dpairs = deltas.reshape(n_layers, 2, 1, 1, -1)

    def block_modules(block, meta, h, dh):
        attn = _attention_batch(block, meta, h[0] + (dh[0] * m).astype(h.dtype), mask)
        mlp = mlp_residual(block, h[1] + (dh[1] * m).astype(h.dtype))
        return jnp.stack([attn, mlp])

    out = jax.vmap(block_modules)(model.blocks, model.meta, pairs, dpairs)
    return out.reshape(inputs.shape)


def masked_sum(x: Float[Array, "*lead b s d"], mask: Bool[Array, "b s"]) -> Float[Array, "*lead d"]:
    """Sum over valid positions, accumulated in float32. Pad positions are dropped, not
    multiplied by zero: a pad whose embedding is zero has a NaN norm Jacobian."""
    return jnp.where(mask[..., None], x.astype(jnp.float32), 0.0).sum(axis=(-3, -2))
