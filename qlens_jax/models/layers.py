"""Pure functions for the transformer math.

Modules in `transformer.py` only hold parameters; everything numerical lives here so that
the lens kernel can differentiate plain functions of the residual stream. Each function
handles one example (no batch axis); callers `jax.vmap` over batches.

Numerically sensitive steps (norm statistics, softmax) run in float32 (float64 for float64
inputs: `compute_dtype`) and cast back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

ACTIVATIONS = {
    # GPT-2's "gelu_new" and PyTorch's tanh-approximated gelu are the same function.
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_fast": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
}


def mlp_hidden(
    activation: str, up: Float[Array, "*batch d_mlp"], gate: Float[Array, "*batch d_mlp"] | None = None
) -> Float[Array, "*batch d_mlp"]:
    """An MLP's hidden layer from its up (and gate) projections: `act(up)`, or the gated
    `act(gate) * up`. The one definition the forward pass and the MLP Jacobian share."""
    act = ACTIVATIONS[activation]
    return act(up) if gate is None else act(gate) * up


def clamped_swiglu(
    up: Float[Array, "*batch d_mlp"], gate: Float[Array, "*batch d_mlp"], alpha: float, limit: float
) -> Float[Array, "*batch d_mlp"]:
    """gpt-oss's experts' hidden layer: `(clip(up, -limit, limit) + 1) * g * sigmoid(alpha g)`
    with `g = min(gate, limit)` (transformers' `GptOssExperts._apply_gate`)."""
    gate = jnp.minimum(gate, limit)
    up = jnp.clip(up, -limit, limit)
    return (up + 1) * gate * jax.nn.sigmoid(gate * alpha)


def gated_slopes(
    hidden_fn, up: Float[Array, "*batch d_mlp"], gate: Float[Array, "*batch d_mlp"]
) -> tuple[Float[Array, "*batch d_mlp"], Float[Array, "*batch d_mlp"], Float[Array, "*batch d_mlp"]]:
    """An elementwise gated hidden layer `hidden_fn(up, gate)` and its derivatives in `up` and `gate`."""
    ones = jnp.ones_like(up)
    hidden, by_up = jax.jvp(lambda u: hidden_fn(u, gate), (up,), (ones,))
    _, by_gate = jax.jvp(lambda g: hidden_fn(up, g), (gate,), (ones,))
    return hidden, by_up, by_gate


def mlp_hidden_slopes(
    activation: str, up: Float[Array, "*batch d_mlp"], gate: Float[Array, "*batch d_mlp"]
) -> tuple[Float[Array, "*batch d_mlp"], Float[Array, "*batch d_mlp"], Float[Array, "*batch d_mlp"]]:
    """A gated hidden layer `act(gate) * up` and its elementwise derivatives in `up` and `gate`."""
    return gated_slopes(lambda u, g: mlp_hidden(activation, u, g), up, gate)


def compute_dtype(dtype) -> jnp.dtype:
    """Where norm statistics and attention logits are computed: float32, or wider inputs' own dtype."""
    return jnp.promote_types(dtype, jnp.float32)


def layer_norm(
    x: Float[Array, "*batch d"],
    weight: Float[Array, " d"] | None,
    bias: Float[Array, " d"] | None,
    eps: float,
) -> Float[Array, "*batch d"]:
    """LayerNorm with biased variance, as torch.nn.LayerNorm."""
    xf = x.astype(compute_dtype(x.dtype))
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    out = (xf - mean) * jax.lax.rsqrt(var + eps)
    if weight is not None:
        out = out * weight.astype(xf.dtype)
    if bias is not None:
        out = out + bias.astype(xf.dtype)
    return out.astype(x.dtype)


def rms_norm(
    x: Float[Array, "*batch d"],
    weight: Float[Array, " d"] | None,
    eps: float,
    offset: float = 0.0,
) -> Float[Array, "*batch d"]:
    """RMSNorm. `offset=1` gives Gemma's `(1 + w)` scaling, `offset=0` Llama's `w`."""
    xf = x.astype(compute_dtype(x.dtype))
    out = xf * jax.lax.rsqrt(jnp.square(xf).mean(-1, keepdims=True) + eps)
    if weight is not None:
        out = out * (offset + weight.astype(xf.dtype))
    return out.astype(x.dtype)


def rope_cos_sin(
    positions: Int[Array, " seq"], inv_freq: Float[Array, " half"], scale: Float[Array, ""]
) -> tuple[Float[Array, "seq rot"], Float[Array, "seq rot"]]:
    """Cos/sin tables in the Hugging Face layout (frequencies repeated, not interleaved)."""
    freqs = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb) * scale, jnp.sin(emb) * scale


def apply_rope(
    x: Float[Array, "seq heads hd"], cos: Float[Array, "seq rot"], sin: Float[Array, "seq rot"]
) -> Float[Array, "seq heads hd"]:
    """Rotary embedding with `rotate_half`, as Llama/Qwen/Gemma in transformers. Tables
    narrower than the head rotate its leading `rot` dimensions only and pass the rest
    (GPT-NeoX's partial rotary, `rotary_pct`)."""
    rot = cos.shape[-1]
    if rot < x.shape[-1]:
        return jnp.concatenate([apply_rope(x[..., :rot], cos, sin), x[..., rot:]], axis=-1)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, None, :].astype(x.dtype)
    sin = sin[:, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def attention_mask(mask: Bool[Array, " seq"], window: Int[Array, ""]) -> Bool[Array, "seq seq"]:
    """Which keys each query may see: causal, valid keys only, and within `window` when > 0.

    A pad query whose window holds no valid key gets an empty row; `dot_product_attention`
    then attends uniformly, as transformers does.
    """
    seq = mask.shape[0]
    q = jnp.arange(seq)[:, None]
    k = jnp.arange(seq)[None, :]
    allowed = (k <= q) & mask[None, :]
    in_window = (window <= 0) | (q - k < window)
    return allowed & in_window


def dot_product_attention(
    q: Float[Array, "seq heads hd"],
    k: Float[Array, "seq kv_heads hd"],
    v: Float[Array, "seq kv_heads hd"],
    allowed: Bool[Array, "seq seq"],
    scale: Float[Array, ""] | float,
    softcap: float | None = None,
    sinks: Float[Array, " heads"] | None = None,
) -> Float[Array, "seq heads hd"]:
    """Grouped-query attention; logits and softmax in float32. `sinks` (gpt-oss): a learned
    logit per head that joins every query's softmax as one more key with no value, so the
    weights over the real keys sum to less than 1."""
    heads, kv_heads = q.shape[1], k.shape[1]
    group = heads // kv_heads
    k = jnp.repeat(k, group, axis=1)
    v = jnp.repeat(v, group, axis=1)
    wide = compute_dtype(q.dtype)
    logits = jnp.einsum("qhd,khd->hqk", q, k, preferred_element_type=wide) * scale
    if softcap is not None:
        logits = jnp.tanh(logits / softcap) * softcap
    # Additive masking, as transformers' eager attention: identical values, and for a fully
    # masked row (a pad query with no valid key in its window) the same uniform attention and
    # the same derivatives, which the reference's first-order key convention lets reach
    # valid positions.
    logits = logits + jnp.where(allowed[None], 0.0, jnp.finfo(wide).min)
    if sinks is None:
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    else:
        sink = jnp.broadcast_to(sinks.astype(wide)[:, None, None], (*logits.shape[:2], 1))
        probs = jax.nn.softmax(jnp.concatenate([logits, sink], axis=-1), axis=-1)[..., :-1].astype(v.dtype)
    return jnp.einsum("hqk,khd->qhd", probs, v)


def softcap(x: Float[Array, "*any"], cap: float | None) -> Float[Array, "*any"]:
    """Gemma's logit soft-capping `cap * tanh(x / cap)`; identity when `cap` is None."""
    if cap is None:
        return x
    return jnp.tanh(x / cap) * cap
