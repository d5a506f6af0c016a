"""A minimal GPT-2 (pre-LN) in Equinox, for training the bundled default model.

This is the training model only; the engine loads the exported Hugging Face folder through
`qlens_jax.models`. Weights are stored in Hugging Face's Conv1D orientation (`[d_in, d_out]`,
`y = x @ W + b`) and named like its keys, so export is a rename. The blocks are stacked on a
leading `layers` axis and scanned.
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int, PRNGKeyArray


@dataclasses.dataclass(frozen=True)
class GPT2Config:
    vocab_size: int = 4096
    n_positions: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    layer_norm_epsilon: float = 1e-5

    @property
    def d_mlp(self) -> int:
        return 4 * self.d_model

    def to_hf_config(self, eos_token_id: int) -> dict:
        """`config.json` for `transformers.GPT2LMHeadModel` (dropout off: inference artifact)."""
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_embd": self.d_model,
            "n_layer": self.n_layers,
            "n_head": self.n_heads,
            "n_inner": None,
            "activation_function": "gelu_new",
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "initializer_range": 0.02,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "use_cache": True,
            "tie_word_embeddings": True,
            "bos_token_id": eos_token_id,
            "eos_token_id": eos_token_id,
            "torch_dtype": "float32",
        }


def layer_norm(x: Float[Array, "... d"], weight, bias, eps: float) -> Float[Array, "... d"]:
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * weight + bias


def causal_attention(x: Float[Array, "seq d"], c_attn_w, c_attn_b, c_proj_w, c_proj_b, n_heads: int):
    seq, d = x.shape
    q, k, v = jnp.split(x @ c_attn_w + c_attn_b, 3, axis=-1)
    q, k, v = (t.reshape(seq, n_heads, d // n_heads) for t in (q, k, v))
    scores = jnp.einsum("qhd,khd->hqk", q, k) / math.sqrt(d // n_heads)
    causal = jnp.tril(jnp.ones((seq, seq), dtype=bool))
    scores = jnp.where(causal, scores, jnp.finfo(scores.dtype).min)
    out = jnp.einsum("hqk,khd->qhd", jax.nn.softmax(scores, axis=-1), v).reshape(seq, d)
    return out @ c_proj_w + c_proj_b


class Blocks(eqx.Module):
    """All transformer blocks, each field stacked on a leading `layers` axis (HF names)."""

    ln_1_weight: Float[Array, "layers d"]
    ln_1_bias: Float[Array, "layers d"]
    attn_c_attn_weight: Float[Array, "layers d three_d"]
    attn_c_attn_bias: Float[Array, "layers three_d"]
    attn_c_proj_weight: Float[Array, "layers d d"]
    attn_c_proj_bias: Float[Array, "layers d"]
    ln_2_weight: Float[Array, "layers d"]
    ln_2_bias: Float[Array, "layers d"]
    mlp_c_fc_weight: Float[Array, "layers d d_mlp"]
    mlp_c_fc_bias: Float[Array, "layers d_mlp"]
    mlp_c_proj_weight: Float[Array, "layers d_mlp d"]
    mlp_c_proj_bias: Float[Array, "layers d"]


class GPT2(eqx.Module):
    config: GPT2Config = eqx.field(static=True)
    wte: Float[Array, "vocab d"]
    wpe: Float[Array, "pos d"]
    blocks: Blocks
    ln_f_weight: Float[Array, " d"]
    ln_f_bias: Float[Array, " d"]

    @staticmethod
    def init(config: GPT2Config, key: PRNGKeyArray) -> "GPT2":
        """GPT-2 initialisation: N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layers)."""
        L, d, m = config.n_layers, config.d_model, config.d_mlp
        k = jax.random.split(key, 6)
        std, proj_std = 0.02, 0.02 / math.sqrt(2 * L)
        normal = lambda key, shape, s: s * jax.random.normal(key, shape, jnp.float32)  # noqa: E731
        blocks = Blocks(
            ln_1_weight=jnp.ones((L, d)),
            ln_1_bias=jnp.zeros((L, d)),
            attn_c_attn_weight=normal(k[0], (L, d, 3 * d), std),
            attn_c_attn_bias=jnp.zeros((L, 3 * d)),
            attn_c_proj_weight=normal(k[1], (L, d, d), proj_std),
            attn_c_proj_bias=jnp.zeros((L, d)),
            ln_2_weight=jnp.ones((L, d)),
            ln_2_bias=jnp.zeros((L, d)),
            mlp_c_fc_weight=normal(k[2], (L, d, m), std),
            mlp_c_fc_bias=jnp.zeros((L, m)),
            mlp_c_proj_weight=normal(k[3], (L, m, d), proj_std),
            mlp_c_proj_bias=jnp.zeros((L, d)),
        )
        return GPT2(
            config=config,
            wte=normal(k[4], (config.vocab_size, d), std),
            wpe=normal(k[5], (config.n_positions, d), 0.01),
            blocks=blocks,
            ln_f_weight=jnp.ones(d),
            ln_f_bias=jnp.zeros(d),
        )

    def residuals(self, tokens: Int[Array, " seq"]) -> tuple[Float[Array, "seq vocab"], dict[str, Array]]:
        """Logits and the points the dictionaries read: `resid_post`, `mlp_in`, `mlp_out`,
        each `[layers, seq, d]` (`mlp_in` = ln_2 output, the MLP's normalized input)."""
        cfg = self.config
        h = self.wte[tokens] + self.wpe[: tokens.shape[0]]

        def block(h, p: Blocks):
            a = layer_norm(h, p.ln_1_weight, p.ln_1_bias, cfg.layer_norm_epsilon)
            h = h + causal_attention(
                a, p.attn_c_attn_weight, p.attn_c_attn_bias, p.attn_c_proj_weight, p.attn_c_proj_bias, cfg.n_heads
            )
            mlp_in = layer_norm(h, p.ln_2_weight, p.ln_2_bias, cfg.layer_norm_epsilon)
            hidden = jax.nn.gelu(mlp_in @ p.mlp_c_fc_weight + p.mlp_c_fc_bias, approximate=True)  # gelu_new
            mlp_out = hidden @ p.mlp_c_proj_weight + p.mlp_c_proj_bias
            h = h + mlp_out
            return h, {"resid_post": h, "mlp_in": mlp_in, "mlp_out": mlp_out}

        h, points = jax.lax.scan(block, h, self.blocks)
        logits = layer_norm(h, self.ln_f_weight, self.ln_f_bias, cfg.layer_norm_epsilon) @ self.wte.T
        return logits, points

    def __call__(self, tokens: Int[Array, " seq"]) -> Float[Array, "seq vocab"]:
        return self.residuals(tokens)[0]


def next_token_loss(model: GPT2, tokens: Int[Array, "batch seq"]) -> Float[Array, ""]:
    """Mean cross-entropy of predicting tokens[:, 1:] from tokens[:, :-1] (no BOS, no padding)."""
    logits = jax.vmap(model)(tokens[:, :-1])
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1).mean()


_BLOCK_KEYS = {
    "ln_1_weight": "ln_1.weight",
    "ln_1_bias": "ln_1.bias",
    "attn_c_attn_weight": "attn.c_attn.weight",
    "attn_c_attn_bias": "attn.c_attn.bias",
    "attn_c_proj_weight": "attn.c_proj.weight",
    "attn_c_proj_bias": "attn.c_proj.bias",
    "ln_2_weight": "ln_2.weight",
    "ln_2_bias": "ln_2.bias",
    "mlp_c_fc_weight": "mlp.c_fc.weight",
    "mlp_c_fc_bias": "mlp.c_fc.bias",
    "mlp_c_proj_weight": "mlp.c_proj.weight",
    "mlp_c_proj_bias": "mlp.c_proj.bias",
}


def to_hf_state_dict(model: GPT2) -> dict[str, "jax.Array"]:
    """Hugging Face `GPT2LMHeadModel` keys (as its `save_pretrained` writes them: tied
    `lm_head.weight` omitted), Conv1D orientation `[d_in, d_out]`."""
    out = {
        "transformer.wte.weight": model.wte,
        "transformer.wpe.weight": model.wpe,
        "transformer.ln_f.weight": model.ln_f_weight,
        "transformer.ln_f.bias": model.ln_f_bias,
    }
    for field, hf in _BLOCK_KEYS.items():
        stacked = getattr(model.blocks, field)
        for layer in range(model.config.n_layers):
            out[f"transformer.h.{layer}.{hf}"] = stacked[layer]
    return out


def from_hf_state_dict(config: GPT2Config, state: dict) -> GPT2:
    """Inverse of `to_hf_state_dict`; every key must be consumed."""
    state = dict(state)
    state.pop("lm_head.weight", None)  # tied
    take = lambda name: jnp.asarray(state.pop(name))  # noqa: E731
    blocks = Blocks(
        **{
            field: jnp.stack([take(f"transformer.h.{i}.{hf}") for i in range(config.n_layers)])
            for field, hf in _BLOCK_KEYS.items()
        }
    )
    model = GPT2(
        config=config,
        wte=take("transformer.wte.weight"),
        wpe=take("transformer.wpe.weight"),
        blocks=blocks,
        ln_f_weight=take("transformer.ln_f.weight"),
        ln_f_bias=take("transformer.ln_f.bias"),
    )
    if state:
        raise ValueError(f"unused checkpoint keys: {sorted(state)}")
    return model
