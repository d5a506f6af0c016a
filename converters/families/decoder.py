"""The `ModelConfig` of a Llama-style decoder (rotary positions, RMSNorm, gated MLP) from a
checked raw config, given what distinguishes its family (`DecoderStyle`).

Llama, Mistral, Qwen-2/3 and Gemma-1/2/3 differ only in the options of `DecoderStyle`; each
family file names its own and the keys it reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from converters.errors import ConversionError, UnsupportedOptionError
from converters.rope import rope_frequencies
from qlens_jax.models import ModelConfig
from qlens_jax.models.layers import ACTIVATIONS

LAYER_TYPES = ("full_attention", "sliding_attention")


@dataclass(frozen=True)
class DecoderStyle:
    """What a Llama-style family does differently. Defaults are Llama's."""

    activation_keys: tuple[str, ...] = ("hidden_act",)  # first set one wins
    default_activation: str = "silu"
    activation_aliases: tuple[tuple[str, str], ...] = ()  # values transformers rewrites (Gemma-1's "gelu")
    gemma_norms: bool = False  # (1 + w) RMSNorm and the sqrt(d_model) embedding scale
    post_norms: bool = False  # norms after attention and MLP, before the residual add
    qk_norm: bool = False
    qkv_bias: bool | None = None  # None: `attention_bias`
    o_bias: bool | None = None  # None: `attention_bias`
    tie_default: bool = False
    query_pre_attn_scalar: bool = False  # attention scale from `query_pre_attn_scalar`, else head_dim
    # Sliding windows: "none" (every layer global, `layer_types` unread), "refused" (a layer
    # marked sliding is refused: Qwen without `use_sliding_window`), "layer_types" (windows on
    # the layers that `layer_types` or `sliding_pattern` marks sliding), "all" (Mistral).
    windows: str = "none"
    sliding_pattern_keys: tuple[str, ...] = ()  # keys giving the local:global period
    default_sliding_pattern: int | None = None  # period when no key gives it (None: all global)
    final_softcap: bool = False  # reads `final_logit_softcapping`
    attn_softcap: bool = False  # reads `attn_logit_softcapping`
    default_rope_theta: float = 10_000.0
    local_rope_theta_key: str | None = None  # Gemma-3: sliding layers' own rope theta


def activation(name: str) -> str:
    """`name` if the model layers implement it, else `UnsupportedOptionError` naming it."""
    if name not in ACTIVATIONS:
        raise UnsupportedOptionError(
            f"activation {name!r} is not supported (supported: {', '.join(sorted(ACTIVATIONS))})"
        )
    return name


def layer_types(raw: dict, n_layers: int, style: DecoderStyle) -> list[str]:
    """Each layer's attention type: `layer_types`, else the family's local:global pattern."""
    types = raw.get("layer_types")
    if types is None:
        pattern = next((raw[k] for k in style.sliding_pattern_keys if k in raw), style.default_sliding_pattern)
        if pattern:
            types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)]
        else:
            types = ["full_attention"] * n_layers
    if len(types) != n_layers:
        raise ConversionError(f"layer_types has {len(types)} entries for {n_layers} layers")
    for t in types:
        if t not in LAYER_TYPES:
            raise UnsupportedOptionError(f"layer type {t!r} is not supported")
    return list(types)


def _rope_params_by_type(raw: dict, style: DecoderStyle) -> dict[str, dict]:
    """Rope parameters per layer type, from the v5 `rope_parameters` or legacy keys."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        return {k: dict(v) for k, v in params.items()}
    if isinstance(params, dict) and params:
        return {"full_attention": dict(params), "sliding_attention": dict(params)}
    full = dict(raw.get("rope_scaling") or {})
    full.setdefault("rope_theta", raw.get("rope_theta", style.default_rope_theta))
    if style.local_rope_theta_key:
        local = {"rope_type": "default", "rope_theta": raw.get(style.local_rope_theta_key, 10_000.0)}
    else:
        local = dict(full)
    return {"full_attention": full, "sliding_attention": local}


def rope_tables(raw: dict, style: DecoderStyle, types: list[str], head_dim: int, max_positions: int):
    """Per-layer rope inverse frequencies and output scales."""
    by_type = _rope_params_by_type(raw, style)
    tables = {}
    for t in set(types):
        if t not in by_type:
            raise ConversionError(f"rope parameters for layer type {t!r} are missing")
        tables[t] = rope_frequencies(by_type[t], head_dim, max_positions)
    inv = tuple(tuple(float(x) for x in tables[t][0]) for t in types)
    scales = tuple(float(tables[t][1]) for t in types)
    return inv, scales


def _windows(raw: dict, family: str, style: DecoderStyle, types: list[str]) -> tuple[int, ...]:
    window = raw.get("sliding_window") or 0
    if style.windows == "all":
        return (window,) * len(types)
    if style.windows == "refused" and "sliding_attention" in types:
        raise UnsupportedOptionError(
            f"{family} config option layer_types marks layers {[i for i, t in enumerate(types) if t != 'full_attention']} "
            "sliding_attention: sliding windows are not supported for this family"
        )
    if style.windows in ("none", "refused"):
        return (0,) * len(types)
    if "sliding_attention" in types and not window:
        raise ConversionError(f"{family} config has sliding layers but no sliding_window")
    return tuple(window if t == "sliding_attention" else 0 for t in types)


def _activation_name(raw: dict, style: DecoderStyle):
    """The first activation key that is set; a single key set to null stays null (refused)."""
    keys = style.activation_keys
    name = next((raw[k] for k in keys if raw.get(k)), None)
    if name is None:
        name = raw.get(keys[0], style.default_activation) if len(keys) == 1 else style.default_activation
    return dict(style.activation_aliases).get(name, name)


def decoder_config(raw: dict[str, Any], family: str, style: DecoderStyle) -> ModelConfig:
    """The `ModelConfig` of a checked Llama-style config `raw` of `family`."""
    d, n_layers, n_heads = raw["hidden_size"], raw["num_hidden_layers"], raw["num_attention_heads"]
    head_dim = raw.get("head_dim") or d // n_heads
    n_kv = raw.get("num_key_value_heads") or n_heads
    max_positions = raw.get("max_position_embeddings", 2048)
    types = layer_types(raw, n_layers, style)
    windows = _windows(raw, family, style, types)
    inv_freq, rope_scales = rope_tables(raw, style, types, head_dim, max_positions)
    if style.query_pre_attn_scalar:
        scale = raw.get("query_pre_attn_scalar", head_dim) ** -0.5
    else:
        scale = head_dim**-0.5
    bias = bool(raw.get("attention_bias", False))
    return ModelConfig(
        model_type=family,
        vocab_size=raw["vocab_size"],
        d_model=d,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_kv,
        head_dim=head_dim,
        d_mlp=raw["intermediate_size"],
        norm="rmsnorm",
        norm_eps=raw.get("rms_norm_eps", 1e-6),
        norm_offset=1.0 if style.gemma_norms else 0.0,
        activation=activation(_activation_name(raw, style)),
        gated_mlp=True,
        positional="rope",
        max_positions=max_positions,
        tie_word_embeddings=raw.get("tie_word_embeddings", style.tie_default),
        qkv_bias=bias if style.qkv_bias is None else style.qkv_bias,
        o_bias=bias if style.o_bias is None else style.o_bias,
        mlp_bias=bool(raw.get("mlp_bias", False)),
        qk_norm=style.qk_norm,
        post_norms=style.post_norms,
        embed_scale=math.sqrt(d) if style.gemma_norms else 1.0,
        attn_logit_softcap=raw.get("attn_logit_softcapping") if style.attn_softcap else None,
        final_logit_softcap=raw.get("final_logit_softcapping") if style.final_softcap else None,
        attn_scales=(scale,) * n_layers,
        sliding_windows=windows,
        rope_inv_freq=inv_freq,
        rope_scales=rope_scales,
    )
