"""Gated DeltaNet linear attention (Qwen3.5's `linear_attention` layers) as an Equinox module.

A linear-attention layer mixes positions through a recurrent state instead of a softmax:

1. in-projections of the normalized input: `qkv` (queries, keys, values), `z` (the output
   gate), `b` (the write strength `beta = sigmoid(b)`) and `a` (the decay
   `g = -exp(A_log) softplus(a + dt_bias)`, in log space);
2. a causal depthwise convolution of `qkv` over the sequence (`conv_kernel` taps), then SiLU;
3. the gated delta rule per value head, with L2-normalized queries and keys (queries also
   scaled by `key_dim ** -0.5`): `S_t = exp(g_t) S_{t-1} + k_t (beta_t (v_t - k_t S_{t-1} exp(g_t)))^T`,
   output `o_t = q_t S_t`;
4. an RMSNorm of each head's output, gated by `silu(z)`: the input of the output projection
   (the `z` site), which the block shares with softmax attention (`Attention.o_proj`).

Padding follows transformers: pad positions' inputs are zeroed before the in-projections
(`apply_mask_to_padding_states`), so left and right padding leave valid positions exactly as
unpadded.

The recurrence is a `lax.scan` over chunks of `CHUNK` positions, each chunk an inner scan under
`jax.checkpoint`: reverse-mode autodiff (the lens's VJP) then stores one `[value_heads, key_dim,
value_dim]` state per chunk and recomputes inside a chunk, so memory stays bounded whatever the
sequence length; forward-mode (JVP) needs no storage. Its linearization is the lens kernel's
(docs/definitions.md section 1c).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

from qlens_jax.models import layers
from qlens_jax.models.config import ModelConfig
from qlens_jax.models.linear import Linear
from qlens_jax.models.mixer import PositionMixer

CHUNK = 64  # positions per checkpointed chunk of the recurrence


def causal_conv(x: Float[Array, "seq channels"], weight: Float[Array, "channels taps"]) -> Float[Array, "seq channels"]:
    """Depthwise causal convolution: `out[t, c] = sum_j weight[c, j] x[t - taps + 1 + j, c]`,
    positions before the start read as 0 (torch's `conv1d(padding=taps - 1)[:seq]`)."""
    taps = weight.shape[-1]
    padded = jnp.pad(x, ((taps - 1, 0), (0, 0)))
    seq = x.shape[0]
    # Elementwise products (no matmul, so no reduced-precision matmul mode on accelerators).
    out = jnp.zeros_like(x)
    for j in range(taps):
        out = out + padded[j : j + seq] * weight[:, j]
    return out


def l2_normalize(x: Float[Array, "*any d"], eps: float = 1e-6) -> Float[Array, "*any d"]:
    """`x / sqrt(|x|^2 + eps)` over the last axis, as transformers' (and FLA's) `l2norm`."""
    return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def gated_delta_rule(
    q: Float[Array, "seq heads dk"],
    k: Float[Array, "seq heads dk"],
    v: Float[Array, "seq heads dv"],
    g: Float[Array, "seq heads"],
    beta: Float[Array, "seq heads"],
) -> Float[Array, "seq heads dv"]:
    """The gated delta rule from a zero state (queries and keys already normalized and scaled):
    a scan over checkpointed chunks of `CHUNK` positions, each an inner scan over positions."""
    seq, heads, dk = k.shape
    dv = v.shape[-1]
    chunk = min(CHUNK, seq)
    pad = -seq % chunk
    # Padded steps have k = 0, beta = 0 and g = 0: they leave the state as it is.
    q, k, v, g, beta = (jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)) for x in (q, k, v, g, beta))
    chunked = lambda x: x.reshape(-1, chunk, *x.shape[1:])

    def step(state, inputs):
        q_t, k_t, v_t, g_t, beta_t = inputs
        state = state * jnp.exp(g_t)[:, None, None]
        remembered = jnp.einsum("hk,hkv->hv", k_t, state)
        delta = (v_t - remembered) * beta_t[:, None]
        state = state + k_t[:, :, None] * delta[:, None, :]
        return state, jnp.einsum("hk,hkv->hv", q_t, state)

    @jax.checkpoint
    def run_chunk(state, inputs):
        return jax.lax.scan(step, state, inputs)

    state = jnp.zeros((heads, dk, dv), v.dtype)
    _, out = jax.lax.scan(run_chunk, state, tuple(chunked(x) for x in (q, k, v, g, beta)))
    return out.reshape(-1, heads, dv)[:seq]


class GatedDeltaNet(PositionMixer):
    """One Gated DeltaNet layer up to its output projection (which the block's `Attention.o_proj`
    holds). `__call__` gives the `z` site: every value head's gated, normalized output."""

    in_qkv: Linear  # [d_model, 2 key_heads key_dim + value_heads value_dim]
    in_z: Linear  # [d_model, value_heads value_dim]
    in_b: Linear  # [d_model, value_heads]
    in_a: Linear  # [d_model, value_heads]
    conv: Float[Array, "*layers channels taps"]
    dt_bias: Float[Array, "*layers value_heads"]
    A_log: Float[Array, "*layers value_heads"]
    norm: Float[Array, "*layers value_dim"]
    key_heads: int = eqx.field(static=True)
    value_heads: int = eqx.field(static=True)
    key_dim: int = eqx.field(static=True)
    value_dim: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    activation: str = eqx.field(static=True)

    def __call__(self, x: Float[Array, "seq d_model"], mask: Bool[Array, " seq"]) -> Float[Array, "seq v_width"]:
        seq = x.shape[0]
        x = x * mask[:, None].astype(x.dtype)
        qkv = layers.ACTIVATIONS[self.activation](causal_conv(self.in_qkv(x), self.conv))
        key_width = self.key_heads * self.key_dim
        q = qkv[:, :key_width].reshape(seq, self.key_heads, self.key_dim)
        k = qkv[:, key_width : 2 * key_width].reshape(seq, self.key_heads, self.key_dim)
        v = qkv[:, 2 * key_width :].reshape(seq, self.value_heads, self.value_dim)
        wide = layers.compute_dtype(x.dtype)
        beta = jax.nn.sigmoid(self.in_b(x)).astype(wide)
        g = -jnp.exp(self.A_log.astype(wide)) * jax.nn.softplus(self.in_a(x).astype(wide) + self.dt_bias)
        # Each query/key head serves `value_heads / key_heads` consecutive value heads.
        group = self.value_heads // self.key_heads
        q, k = (jnp.repeat(t.astype(wide), group, axis=1) for t in (q, k))
        q = l2_normalize(q) * self.key_dim**-0.5
        out = gated_delta_rule(q, l2_normalize(k), v.astype(wide), g, beta).astype(x.dtype)
        gate = self.in_z(x).reshape(seq, self.value_heads, self.value_dim)
        return gated_rms_norm(out, gate, self.norm, self.eps).reshape(seq, self.value_heads * self.value_dim)

    def mix(self, x: Float[Array, "seq d_model"], mask: Bool[Array, " seq"], meta) -> Float[Array, "seq v_width"]:
        """`PositionMixer.mix`: the layer needs no per-layer metadata."""
        return self(x, mask)

    @staticmethod
    def linearization_floats(config: ModelConfig, seq_len: int) -> int:
        """The in-projections and convolution (`2 x` their channels), the gates, and one
        `[value_heads, key_dim, value_dim]` state per `CHUNK` positions."""
        c = config
        channels = 2 * c.linear_key_heads * c.linear_key_dim + 2 * c.linear_value_heads * c.linear_value_dim
        state = c.linear_value_heads * c.linear_key_dim * c.linear_value_dim
        return 2 * channels + 4 * c.linear_value_heads + -(-state // min(CHUNK, seq_len))


def gated_rms_norm(
    x: Float[Array, "*batch d"], gate: Float[Array, "*batch d"], weight: Float[Array, " d"], eps: float
) -> Float[Array, "*batch d"]:
    """`weight * rms_norm(x) * silu(gate)` (transformers' `RMSNormGated`: norm before gate)."""
    normed = layers.rms_norm(x, None, eps)
    out = (weight * normed).astype(layers.compute_dtype(x.dtype)) * jax.nn.silu(
        gate.astype(layers.compute_dtype(x.dtype))
    )
    return out.astype(x.dtype)
