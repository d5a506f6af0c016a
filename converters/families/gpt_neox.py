"""GPT-NeoX (`GPTNeoXForCausalLM`, Pythia): `config.json` -> `ModelConfig`, and its weight plan.

Parallel attention and MLP (`use_parallel_residual`, sequential when false), partial rotary
(`rotary_pct` / `rope_parameters.partial_rotary_factor`: RoPE on the leading dimensions of each
head, Hugging Face's `rotate_half` layout), LayerNorm with bias, an untied unembedding
(`embed_out`), and a fused `query_key_value` projection whose output rows are laid out per head
(`[q_h, k_h, v_h]` for head `h`, as transformers' `view(..., heads, 3 * head_size)` splits them).

Every key of a GPT-NeoX config is read, known to be inert, or refused by name (and value).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from converters.errors import ConversionError, UnsupportedOptionError
from converters.families.decoder import activation
from converters.families.spec import FamilySpec, register
from converters.families.weights import LM_HEAD, Source, transpose
from converters.rope import rope_frequencies
from qlens_jax.models import ModelConfig

MODEL_TYPE = "gpt_neox"

# Keys whose values shape the forward pass, all read below.
READ_KEYS = frozenset(
    """vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads hidden_act
    layer_norm_eps use_parallel_residual rotary_pct rotary_emb_base rope_parameters rope_scaling
    attention_bias max_position_embeddings tie_word_embeddings""".split()
)

# GPT-NeoX's own keys that do not change a float forward pass in eval mode (dropout in every
# spelling its configs have used; `is_decoder`), and options of other families that
# transformers' GPT-NeoX never reads. (`head_dim` is not inert: its rotary embedding reads it.)
INERT = frozenset(
    """hidden_dropout classifier_dropout hidden_dropout_prob attention_probs_dropout_prob is_decoder
    num_key_value_heads max_window_layers _sliding_window_pattern sliding_window_pattern rope_local_base_freq
    final_logit_softcapping attn_logit_softcapping query_pre_attn_scalar sliding_window use_sliding_window
    layer_types""".split()
)

# rope_parameters entries transformers' GPT-NeoX reads for the rope types converted here.
ROPE_KEYS = frozenset("rope_type type rope_theta partial_rotary_factor factor".split())
ROPE_TYPES = ("default", "linear")


def rope_parameters(raw: dict[str, Any]) -> dict[str, Any]:
    """The rope parameters as transformers' `GPTNeoXConfig` resolves them: `rope_scaling` or
    `rope_parameters`, with `rotary_emb_base` (10000) and `rotary_pct` (0.25) as defaults."""
    params = dict(raw.get("rope_scaling") or raw.get("rope_parameters") or {})
    params.setdefault("rope_theta", raw.get("rotary_emb_base", 10_000))
    params.setdefault("partial_rotary_factor", raw.get("rotary_pct", 0.25))
    unknown = sorted(set(params) - ROPE_KEYS)
    if unknown:
        raise UnsupportedOptionError(f"gpt_neox config rope_parameters option(s) not supported: {', '.join(unknown)}")
    params["rope_theta"] = float(params["rope_theta"])  # Pythia configs write an int
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise UnsupportedOptionError(
            f"gpt_neox config rope_type {rope_type!r} is not supported (supported: {', '.join(ROPE_TYPES)})"
        )
    return params


def rotary_dim(head_dim: int, factor: float) -> int:
    """Dimensions of each head that RoPE rotates: `int(head_dim * factor)`, as transformers."""
    dim = int(head_dim * factor)
    if dim <= 0 or dim % 2:
        raise UnsupportedOptionError(
            f"gpt_neox config rotary_pct / partial_rotary_factor={factor!r} gives {dim} rotary dimensions "
            f"of head_dim={head_dim}; only an even, positive number is supported"
        )
    return dim


def build(raw: dict[str, Any]) -> ModelConfig:
    """`ModelConfig` of a checked GPT-NeoX config dict."""
    d, n_layers, n_heads = raw["hidden_size"], raw["num_hidden_layers"], raw["num_attention_heads"]
    if d % n_heads:
        raise ConversionError(f"gpt_neox config hidden_size={d} is not a multiple of num_attention_heads={n_heads}")
    head_dim = d // n_heads
    max_positions = raw.get("max_position_embeddings", 2048)
    params = rope_parameters(raw)
    rotated = rotary_dim(head_dim, params.pop("partial_rotary_factor"))
    inv_freq, scale = rope_frequencies(params, rotated, max_positions)
    bias = bool(raw.get("attention_bias", True))
    return ModelConfig(
        model_type=MODEL_TYPE,
        vocab_size=raw["vocab_size"],
        d_model=d,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        head_dim=head_dim,
        d_mlp=raw["intermediate_size"],
        norm="layernorm",
        norm_eps=raw.get("layer_norm_eps", 1e-5),
        activation=activation(raw.get("hidden_act", "gelu")),
        gated_mlp=False,
        positional="rope",
        max_positions=max_positions,
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        qkv_bias=bias,
        o_bias=bias,
        mlp_bias=True,
        parallel_residual=bool(raw.get("use_parallel_residual", True)),
        rotary_dim=rotated,
        attn_scales=(head_dim**-0.5,) * n_layers,
        sliding_windows=(0,) * n_layers,
        rope_inv_freq=(tuple(float(x) for x in inv_freq),) * n_layers,
        rope_scales=(float(scale),) * n_layers,
    )


def fused_qkv(part: int, n_heads: int, head_dim: int, weight: bool) -> Callable[[np.ndarray], np.ndarray]:
    """Part `part` (0: q, 1: k, 2: v) of `query_key_value`'s weight (`[3 d, d]`, returned
    transposed `[d, q_dim]`) or bias (`[3 d]`), whose rows are `[q_h, k_h, v_h]` per head `h`."""

    def take(x: np.ndarray) -> np.ndarray:
        split = x.reshape(n_heads, 3, head_dim, *x.shape[1:])[:, part]
        split = split.reshape(n_heads * head_dim, *x.shape[1:])
        return split.T if weight else split

    return take


def weights(c: ModelConfig) -> dict[str, Source]:
    """Checkpoint keys (below the base prefix `gpt_neox.`) of each model leaf; `{i}` is the
    layer. `query_key_value` fills three leaves (`fused_qkv`); Linear weights are `[out, in]`."""
    layer = "layers.{i}."
    plan = {
        "embed_tokens": Source("embed_in.weight"),
        "final_norm.weight": Source("final_layer_norm.weight"),
        "final_norm.bias": Source("final_layer_norm.bias"),
        "blocks.attn_norm.weight": Source(layer + "input_layernorm.weight"),
        "blocks.attn_norm.bias": Source(layer + "input_layernorm.bias"),
        "blocks.mlp_norm.weight": Source(layer + "post_attention_layernorm.weight"),
        "blocks.mlp_norm.bias": Source(layer + "post_attention_layernorm.bias"),
        "blocks.attn.o_proj.weight": Source(layer + "attention.dense.weight", transpose),
        "blocks.attn.o_proj.bias": Source(layer + "attention.dense.bias"),
        "blocks.mlp.up_proj.weight": Source(layer + "mlp.dense_h_to_4h.weight", transpose),
        "blocks.mlp.up_proj.bias": Source(layer + "mlp.dense_h_to_4h.bias"),
        "blocks.mlp.down_proj.weight": Source(layer + "mlp.dense_4h_to_h.weight", transpose),
        "blocks.mlp.down_proj.bias": Source(layer + "mlp.dense_4h_to_h.bias"),
    }
    for part, name in enumerate("qkv"):
        fused = layer + "attention.query_key_value."
        plan[f"blocks.attn.{name}_proj.weight"] = Source(fused + "weight", fused_qkv(part, c.n_heads, c.head_dim, True))
        plan[f"blocks.attn.{name}_proj.bias"] = Source(fused + "bias", fused_qkv(part, c.n_heads, c.head_dim, False))
    if not c.tie_word_embeddings:
        plan["lm_head"] = Source(LM_HEAD)
    return plan


SPEC = register(
    FamilySpec(
        model_type=MODEL_TYPE,
        reads=READ_KEYS,
        inert=INERT,
        build=build,
        weights=weights,
        embed_key="embed_in.weight",
        # Original checkpoints (and what transformers writes) keep the unembedding as
        # `embed_out.weight`; transformers' in-memory model calls it `lm_head.weight`.
        lm_head_keys=("embed_out.weight", LM_HEAD),
        # The causal mask and its fill value, buffers in GPT-NeoX checkpoints.
        buffer_keys=("attention.bias", "attention.masked_bias"),
        torch_style="neox",
    )
)
