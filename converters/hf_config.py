"""Hugging Face `config.json` -> `ModelConfig`, refusing every option it does not implement.

Each family lists the keys it reads and the values it requires of the keys it does not
implement; any other key that is not known to be harmless raises `UnsupportedOptionError`
naming it. Nothing is silently ignored.
"""

from __future__ import annotations

import math
from typing import Any

from converters.errors import ConversionError, UnsupportedOptionError
from converters.rope import rope_frequencies
from qlens_jax.models import ModelConfig
from qlens_jax.models.layers import ACTIVATIONS

# Keys with no effect on a float forward pass (bookkeeping, dropout, generation, tokens).
HARMLESS_KEYS = frozenset(
    """_name_or_path architectures attention_dropout attn_pdrop resid_pdrop embd_pdrop
    summary_type summary_use_proj summary_activation summary_proj_to_labels summary_first_dropout
    bos_token_id eos_token_id pad_token_id sep_token_id decoder_start_token_id chunk_size_feed_forward dtype
    torch_dtype id2label label2id initializer_range is_encoder_decoder output_attentions
    output_hidden_states problem_type return_dict transformers_version use_cache tokenizer_class
    task_specific_params n_ctx pretraining_tp use_return_dict torchscript prefix finetuning_task
    cache_implementation _attn_implementation_autoset attn_implementation max_window_layers
    _sliding_window_pattern sliding_window_pattern model_type tie_word_embeddings
    max_position_embeddings n_positions layer_types rope_parameters rope_theta rope_scaling
    rope_local_base_freq head_dim num_key_value_heads generation_config keys_to_ignore_at_inference
    auto_map use_bfloat16 tf_legacy_loss pruned_heads output_scores return_dict_in_generate
    add_bos_token final_logit_softcapping attn_logit_softcapping query_pre_attn_scalar
    sliding_window use_sliding_window""".split()
)

# Options whose non-default values change the math and are not implemented: key -> allowed values.
REQUIRED_VALUES: dict[str, dict[str, tuple]] = {
    "gpt2": {"add_cross_attention": (False,), "reorder_and_upcast_attn": (False, True)},
    "llama": {},
    "qwen2": {"use_sliding_window": (False,)},
    "qwen3": {"use_sliding_window": (False,)},
    "gemma3_text": {"use_bidirectional_attention": (False, None)},
}

FAMILY_KEYS: dict[str, frozenset] = {
    "gpt2": frozenset(
        "vocab_size n_embd n_layer n_head n_inner activation_function layer_norm_epsilon "
        "scale_attn_weights scale_attn_by_inverse_layer_idx".split()
    ),
    "llama": frozenset(
        "vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads "
        "hidden_act rms_norm_eps attention_bias mlp_bias".split()
    ),
    "qwen2": frozenset(
        "vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads "
        "hidden_act rms_norm_eps".split()
    ),
    "qwen3": frozenset(
        "vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads "
        "hidden_act rms_norm_eps attention_bias".split()
    ),
    "gemma3_text": frozenset(
        "vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads "
        "hidden_activation hidden_act rms_norm_eps attention_bias".split()
    ),
}

# transformers' `Gemma3TextConfig` defaults of the options that change the math. Official
# multimodal checkpoints (Gemma-3 4B/12B/27B) write a sparse `text_config` that relies on them.
GEMMA3_TEXT_DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208, "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
    "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh", "max_position_embeddings": 131_072, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True, "attention_bias": False, "query_pre_attn_scalar": 256,
    "sliding_window": 4096, "final_logit_softcapping": None, "attn_logit_softcapping": None,
}

# Multimodal wrappers whose language model is converted: wrapper model_type -> text family.
MULTIMODAL_TEXT_FAMILIES = {"gemma3": "gemma3_text"}

# Top-level options of a multimodal wrapper that only concern image inputs, which a text-only
# forward pass never reads (the vision tower and projector are not converted).
# `image_token_index` only matters for ids >= vocab_size, which text inputs cannot hold.
MULTIMODAL_IMAGE_KEYS = frozenset(
    "vision_config mm_tokens_per_image boi_token_index eoi_token_index image_token_index".split()
)

SUPPORTED_MODEL_TYPES = tuple(FAMILY_KEYS) + tuple(MULTIMODAL_TEXT_FAMILIES)


def _check_keys(raw: dict[str, Any], family: str, label: str) -> None:
    known = FAMILY_KEYS[family] | HARMLESS_KEYS | set(REQUIRED_VALUES[family])
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        raise UnsupportedOptionError(
            f"{label} option(s) not supported by the converter: {', '.join(unknown)}"
        )
    for key, allowed in REQUIRED_VALUES[family].items():
        if key in raw and raw[key] not in allowed:
            raise UnsupportedOptionError(
                f"{label} option {key}={raw[key]!r} is not supported (supported: {allowed})"
            )


def _activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise UnsupportedOptionError(
            f"activation {name!r} is not supported (supported: {', '.join(sorted(ACTIVATIONS))})"
        )
    return name


def _layer_types(raw: dict, n_layers: int, family: str) -> list[str]:
    types = raw.get("layer_types")
    if types is None:
        if family == "gemma3_text":
            pattern = raw.get("sliding_window_pattern", raw.get("_sliding_window_pattern", 6))
            types = [
                "full_attention" if (i + 1) % pattern == 0 else "sliding_attention" for i in range(n_layers)
            ]
        else:
            types = ["full_attention"] * n_layers
    if len(types) != n_layers:
        raise ConversionError(f"layer_types has {len(types)} entries for {n_layers} layers")
    for t in types:
        if t not in ("full_attention", "sliding_attention"):
            raise UnsupportedOptionError(f"layer type {t!r} is not supported")
    return list(types)


def _rope_params_by_type(raw: dict, family: str) -> dict[str, dict]:
    """Rope parameters per layer type, from the v5 `rope_parameters` or legacy keys."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        return {k: dict(v) for k, v in params.items()}
    if isinstance(params, dict) and params:
        return {"full_attention": dict(params), "sliding_attention": dict(params)}
    default_theta = 1_000_000.0 if family == "gemma3_text" else 10_000.0
    full = dict(raw.get("rope_scaling") or {})
    full.setdefault("rope_theta", raw.get("rope_theta", default_theta))
    if family == "gemma3_text":
        local = {"rope_type": "default", "rope_theta": raw.get("rope_local_base_freq", 10_000.0)}
    else:
        local = dict(full)
    return {"full_attention": full, "sliding_attention": local}


def _rope_tables(raw, family, layer_types, head_dim, max_positions):
    by_type = _rope_params_by_type(raw, family)
    tables = {}
    for t in set(layer_types):
        if t not in by_type:
            raise ConversionError(f"rope parameters for layer type {t!r} are missing")
        tables[t] = rope_frequencies(by_type[t], head_dim, max_positions)
    inv = tuple(tuple(float(x) for x in tables[t][0]) for t in layer_types)
    scales = tuple(float(tables[t][1]) for t in layer_types)
    return inv, scales


def is_multimodal(raw: dict[str, Any]) -> bool:
    """Whether `raw` is a multimodal wrapper's config, of which only the language model converts."""
    return raw.get("model_type") in MULTIMODAL_TEXT_FAMILIES


def language_model_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The text config of a multimodal wrapper's config, after checking the wrapper's own options.

    Only what a text-only forward pass reads is accepted: the wrapper's image options
    (`MULTIMODAL_IMAGE_KEYS`) and bookkeeping; any other top-level option raises
    `UnsupportedOptionError` naming it. The text config is then checked like a text model's.
    """
    wrapper = raw["model_type"]
    family = MULTIMODAL_TEXT_FAMILIES[wrapper]
    known = MULTIMODAL_IMAGE_KEYS | HARMLESS_KEYS | {"text_config"}
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        raise UnsupportedOptionError(
            f"{wrapper} (multimodal) config option(s) not supported by the converter: {', '.join(unknown)}"
        )
    text = raw.get("text_config")
    if not isinstance(text, dict):
        raise ConversionError(f"{wrapper} (multimodal) config has no text_config: cannot convert its language model")
    text = dict(text)
    if text.setdefault("model_type", family) != family:
        raise UnsupportedOptionError(
            f"{wrapper} (multimodal) config has a text_config of model_type {text['model_type']!r}; "
            f"only {family!r} is supported"
        )
    if text.get("final_logit_softcapping") is not None:
        # Gemma3ForConditionalGeneration returns lm_head(h) without the soft-cap its text model's
        # config names (Gemma3ForCausalLM applies it); refuse to pick one.
        raise UnsupportedOptionError(
            f"{wrapper} (multimodal) text_config option final_logit_softcapping is set, but transformers' "
            "Gemma3ForConditionalGeneration does not apply it; remove it (official Gemma-3 configs have null)"
        )
    # transformers ties the wrapper's lm_head by the top-level value (default True); the text
    # config's own value belongs to its headless language model and is never read.
    text["tie_word_embeddings"] = raw.get("tie_word_embeddings", True)
    return text


def model_config_from_hf(raw: dict[str, Any]) -> ModelConfig:
    """Build a `ModelConfig` from a Hugging Face config dict (as in `config.json`).

    A multimodal wrapper (`gemma3` with a `text_config`) gives the config of its language model.
    """
    label = f"{raw.get('model_type')} config"
    if is_multimodal(raw):
        label = f"{raw['model_type']} (multimodal) text_config"
        raw = language_model_config(raw)
    family = raw.get("model_type")
    if family not in FAMILY_KEYS:
        raise UnsupportedOptionError(
            f"unknown model_type {family!r} (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    if family == "gemma3_text":
        raw = {**GEMMA3_TEXT_DEFAULTS, **raw}
    _check_keys(raw, family, label)
    if family == "gpt2":
        return _gpt2(raw)
    return _rope_family(raw, family)


def _gpt2(raw: dict) -> ModelConfig:
    d, n_layers, n_heads = raw["n_embd"], raw["n_layer"], raw["n_head"]
    head_dim = d // n_heads
    scale = head_dim**-0.5 if raw.get("scale_attn_weights", True) else 1.0
    by_layer = raw.get("scale_attn_by_inverse_layer_idx", False)
    scales = tuple(scale / (i + 1) if by_layer else scale for i in range(n_layers))
    positions = raw.get("n_positions", raw.get("max_position_embeddings", 1024))
    return ModelConfig(
        model_type="gpt2",
        vocab_size=raw["vocab_size"],
        d_model=d,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=n_heads,
        head_dim=head_dim,
        d_mlp=raw.get("n_inner") or 4 * d,
        norm="layernorm",
        norm_eps=raw.get("layer_norm_epsilon", 1e-5),
        activation=_activation(raw.get("activation_function", "gelu_new")),
        gated_mlp=False,
        positional="learned",
        max_positions=positions,
        tie_word_embeddings=raw.get("tie_word_embeddings", True),
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        attn_scales=scales,
        sliding_windows=(0,) * n_layers,
        rope_inv_freq=(),
        rope_scales=(1.0,) * n_layers,
    )


def _rope_family(raw: dict, family: str) -> ModelConfig:
    d, n_layers, n_heads = raw["hidden_size"], raw["num_hidden_layers"], raw["num_attention_heads"]
    head_dim = raw.get("head_dim") or d // n_heads
    n_kv = raw.get("num_key_value_heads") or n_heads
    gemma = family == "gemma3_text"
    max_positions = raw.get("max_position_embeddings", 2048)
    layer_types = _layer_types(raw, n_layers, family)
    window = raw.get("sliding_window") or 0
    if gemma and "sliding_attention" in layer_types and not window:
        raise ConversionError("gemma3_text config has sliding layers but no sliding_window")
    windows = tuple(window if t == "sliding_attention" and gemma else 0 for t in layer_types)
    inv_freq, rope_scales = _rope_tables(raw, family, layer_types, head_dim, max_positions)
    if gemma:
        scale = raw.get("query_pre_attn_scalar", head_dim) ** -0.5
        activation = raw.get("hidden_activation") or raw.get("hidden_act") or "gelu_pytorch_tanh"
    else:
        scale = head_dim**-0.5
        activation = raw.get("hidden_act", "silu")
    if gemma and raw.get("attn_logit_softcapping") is not None:
        # transformers' Gemma-3 attention stores this option but never applies it; refuse to guess.
        raise UnsupportedOptionError(
            "gemma3_text config option attn_logit_softcapping is set, but transformers' Gemma-3 does "
            "not apply it; remove it from config.json (official Gemma-3 configs have null)"
        )
    bias = bool(raw.get("attention_bias", False))
    tie_default = gemma
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
        norm_offset=1.0 if gemma else 0.0,
        activation=_activation(activation),
        gated_mlp=True,
        positional="rope",
        max_positions=max_positions,
        tie_word_embeddings=raw.get("tie_word_embeddings", tie_default),
        qkv_bias=True if family == "qwen2" else bias,
        o_bias=False if family == "qwen2" else bias,
        mlp_bias=bool(raw.get("mlp_bias", False)),
        qk_norm=family in ("qwen3", "gemma3_text"),
        post_norms=gemma,
        embed_scale=math.sqrt(d) if gemma else 1.0,
        final_logit_softcap=raw.get("final_logit_softcapping") if gemma else None,
        attn_scales=(scale,) * n_layers,
        sliding_windows=windows,
        rope_inv_freq=inv_freq,
        rope_scales=rope_scales,
    )
