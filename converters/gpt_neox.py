"""GPT-NeoX (Pythia): `config.json` -> `ModelConfig`, and where its checkpoints keep the weights.

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
from converters.rope import rope_frequencies
from qlens_jax.models import ModelConfig
from qlens_jax.models.layers import ACTIVATIONS

MODEL_TYPE = "gpt_neox"

# Keys whose values shape the forward pass, all read below.
READ_KEYS = frozenset(
    """vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads hidden_act
    layer_norm_eps use_parallel_residual rotary_pct rotary_emb_base rope_parameters rope_scaling
    attention_bias max_position_embeddings tie_word_embeddings""".split()
)

# Keys of GPT-NeoX configs that do not change a float forward pass in eval mode: dropout
# (every spelling its configs have used), bookkeeping, generation and token ids.
INERT_KEYS = frozenset(
    """hidden_dropout attention_dropout classifier_dropout hidden_dropout_prob
    attention_probs_dropout_prob is_decoder use_cache _name_or_path architectures dtype torch_dtype
    transformers_version bos_token_id eos_token_id pad_token_id initializer_range model_type
    id2label label2id problem_type return_dict output_attentions output_hidden_states
    tokenizer_class use_return_dict torchscript prefix finetuning_task task_specific_params
    keys_to_ignore_at_inference _attn_implementation_autoset attn_implementation use_bfloat16
    tf_legacy_loss pruned_heads output_scores return_dict_in_generate chunk_size_feed_forward
    is_encoder_decoder decoder_start_token_id sep_token_id add_cross_attention cross_attention_hidden_size
    generation_config auto_map""".split()
)

# Inert keys that are only inert at these values (anything else changes the model).
REQUIRED_VALUES: dict[str, tuple] = {"add_cross_attention": (False,)}

# rope_parameters entries transformers' GPT-NeoX reads for the rope types converted here.
ROPE_KEYS = frozenset("rope_type type rope_theta partial_rotary_factor factor".split())
ROPE_TYPES = ("default", "linear")


def check_keys(raw: dict[str, Any], label: str = "gpt_neox config") -> None:
    """Refuse any key that is neither read nor inert, and inert keys at values that are not."""
    unknown = sorted(k for k in raw if k not in READ_KEYS | INERT_KEYS)
    if unknown:
        raise UnsupportedOptionError(f"{label} option(s) not supported by the converter: {', '.join(unknown)}")
    for key, allowed in REQUIRED_VALUES.items():
        if key in raw and raw[key] not in allowed:
            raise UnsupportedOptionError(f"{label} option {key}={raw[key]!r} is not supported (supported: {allowed})")


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


def model_config(raw: dict[str, Any]) -> ModelConfig:
    """`ModelConfig` of a GPT-NeoX config dict, after `check_keys`."""
    d, n_layers, n_heads = raw["hidden_size"], raw["num_hidden_layers"], raw["num_attention_heads"]
    if d % n_heads:
        raise ConversionError(f"gpt_neox config hidden_size={d} is not a multiple of num_attention_heads={n_heads}")
    head_dim = d // n_heads
    activation = raw.get("hidden_act", "gelu")
    if activation not in ACTIVATIONS:
        raise UnsupportedOptionError(
            f"gpt_neox config hidden_act={activation!r} is not supported (supported: {', '.join(sorted(ACTIVATIONS))})"
        )
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
        activation=activation,
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


# Checkpoint keys (below the base prefix `gpt_neox.`) of each model leaf; `{i}` is the layer.
# `query_key_value` fills three leaves (`fused_qkv`); Linear weights are stored `[out, in]`.
LAYER = "layers.{i}."
LEAVES = {
    "embed_tokens": ("embed_in.weight", None),
    "final_norm.weight": ("final_layer_norm.weight", None),
    "final_norm.bias": ("final_layer_norm.bias", None),
    "blocks.attn_norm.weight": (LAYER + "input_layernorm.weight", None),
    "blocks.attn_norm.bias": (LAYER + "input_layernorm.bias", None),
    "blocks.mlp_norm.weight": (LAYER + "post_attention_layernorm.weight", None),
    "blocks.mlp_norm.bias": (LAYER + "post_attention_layernorm.bias", None),
    "blocks.attn.o_proj.weight": (LAYER + "attention.dense.weight", "transpose"),
    "blocks.attn.o_proj.bias": (LAYER + "attention.dense.bias", None),
    "blocks.mlp.up_proj.weight": (LAYER + "mlp.dense_h_to_4h.weight", "transpose"),
    "blocks.mlp.up_proj.bias": (LAYER + "mlp.dense_h_to_4h.bias", None),
    "blocks.mlp.down_proj.weight": (LAYER + "mlp.dense_4h_to_h.weight", "transpose"),
    "blocks.mlp.down_proj.bias": (LAYER + "mlp.dense_4h_to_h.bias", None),
}
# The probe that finds the base prefix, and the unembedding's keys: original checkpoints (and
# what transformers writes) say `embed_out.weight`, transformers' in-memory model `lm_head.weight`.
EMBEDDING_KEY = "embed_in.weight"
UNEMBEDDING_KEYS = ("embed_out.weight", "lm_head.weight")
# Buffers GPT-NeoX checkpoints carry that are not parameters (the causal mask and its fill value).
IGNORED_KEY_PATTERN = r"attention\.bias|attention\.masked_bias"


def unembedding_key(keys) -> str:
    """The key of the untied unembedding among checkpoint `keys` (the first known one present)."""
    return next((k for k in UNEMBEDDING_KEYS if k in keys), UNEMBEDDING_KEYS[0])
