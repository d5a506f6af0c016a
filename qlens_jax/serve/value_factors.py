"""The value-side reverse lookup factored through the final norm's per-feature statistics.

docs/definitions.md section 8 defines the value score of token `t` for feature `i` as
`s_i(t) = softcap(W_U[:, t]^T LN_final(m_i))` with `m_i = M_p v_i` (the models here have no
unembedding bias). The final norm is not linear in `m_i`, but it is an affine map of `m_i` once
two numbers of `m_i` are known: its mean `mu_i` and reciprocal scale `rstd_i`. Those depend on
the feature and the operator, never on the token, so they are computed once per dictionary and
operator (`norm_statistics`, the transport of every feature) and every later lookup costs
`n x d_model` (`factored_value_scores`), like the key side.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from qlens_jax.models import layers
from qlens_jax.models.transformer import Norm, Transformer


def norm_statistics(norm: Norm, vectors: Float[Array, "n d"]) -> Float[Array, "n 2"]:
    """`(mu_i, rstd_i)` of each row as `norm` computes them (`layers.layer_norm` / `rms_norm`,
    float32, the norm's own epsilon): LayerNorm `mu = mean(m)`, `rstd = 1/sqrt(var(m) + eps)`
    (biased variance); RMSNorm `mu = 0`, `rstd = 1/sqrt(mean(m^2) + eps)`. `vectors` are the
    transported feature vectors `m_i`, already cast to the model's dtype as `value_scores` does."""
    x = vectors.astype(jnp.float32)
    if norm.kind == "layernorm":
        mean = x.mean(-1)
        var = jnp.square(x - mean[:, None]).mean(-1)
    else:
        mean = jnp.zeros(x.shape[0], jnp.float32)
        var = jnp.square(x).mean(-1)
    return jnp.stack([mean, jax.lax.rsqrt(var + norm.eps)], axis=-1)


class ValueFactors(eqx.Module):
    """The token-dependent pieces of `factored_value_scores` for one token `t` and operator `M_p`."""

    pulled: Float[Array, " w"]  # M_p^T (g * w_t): the norm's scale times the unembedding column, pulled back
    scale_sum: Float[Array, ""]  # <1, g * w_t>, multiplied by mu_i (0 for RMSNorm)
    constant: Float[Array, ""]  # <beta, w_t>: the norm's bias read out (0 without one, or when removed)
    softcap: float | None = eqx.field(static=True)


def value_factors(
    model: Transformer, op: Float[Array, "d w"], token: int | Int[Array, ""], remove_final_norm_bias: bool = False
) -> ValueFactors:
    """`ValueFactors` of `token` with the model's final norm (its weight, bias, offset) and soft-capping.
    `op` maps the dictionary's value vectors (`w` wide: `d_model`, or `n_heads x head_dim` at `z`)
    to the final residual (`X @ op.T`)."""
    return _value_factors(model, op, jnp.asarray(token, jnp.int32), remove_final_norm_bias)


@eqx.filter_jit
def _value_factors(
    model: Transformer, op: Float[Array, "d w"], token: Int[Array, ""], remove_final_norm_bias: bool
) -> ValueFactors:
    # jitted with a traced token: one compilation for every token, and W_U's column read in place
    norm = model.final_norm
    column = model.W_U[:, token].astype(jnp.float32)
    scale = jnp.ones_like(column) if norm.weight is None else norm.offset + norm.weight.astype(jnp.float32)
    scaled = scale * column
    bias = None if remove_final_norm_bias or norm.kind != "layernorm" else norm.bias
    constant = jnp.zeros((), jnp.float32) if bias is None else jnp.dot(bias.astype(jnp.float32), column)
    return ValueFactors(
        jnp.matmul(op.astype(jnp.float32).T, scaled), scaled.sum(), constant, model.config.final_logit_softcap
    )


@eqx.filter_jit
def factored_value_scores(
    factors: ValueFactors, statistics: Float[Array, "n 2"], rows: Float[Array, "n w"]
) -> Float[Array, " n"]:
    """`s_i(t)` for rows `v_i`, exactly the `value_scores` entry of `t` for `m_i = M_p v_i`.

    With LayerNorm `LN(m) = g * (m - mu(m)) * rstd(m) + beta`, column `w_t = W_U[:, t]`:

        w_t^T LN(m_i) = rstd_i * (<m_i, g*w_t> - mu_i * <1, g*w_t>) + <beta, w_t>
        <m_i, g*w_t>  = <M_p v_i, g*w_t> = <v_i, M_p^T (g*w_t)>

    so with `mu_i, rstd_i` known (`norm_statistics` of `M_p v_i`, token independent) the score is
    linear in `v_i`: one `d x w` product per token (`value_factors`) and `n x w` per lookup (`w`:
    the width of the dictionary's site, `n_heads x head_dim` at `z`).
    RMSNorm is the case `mu_i = 0`, `beta = 0`, with `g` Gemma's `1 + w` where the model has
    it; `remove_final_norm_bias` drops `<beta, w_t>`; soft-capping is applied after. Everything
    runs in float32 (for a bfloat16 model the forward readout also rounds the normalized vector
    to bfloat16 before the unembedding; the two then differ by that rounding).
    """
    dots = jnp.matmul(rows.astype(jnp.float32), factors.pulled)
    mean, rstd = statistics[:, 0], statistics[:, 1]
    return layers.softcap(rstd * (dots - mean * factors.scale_sum) + factors.constant, factors.softcap)
