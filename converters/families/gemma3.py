"""Gemma-3 text (`Gemma3ForCausalLM`, and the language model of the multimodal
`Gemma3ForConditionalGeneration`): (1 + w) RMSNorms before and after both modules, q/k norms,
the sqrt(d) embedding scale, 5:1 local:global layers with their own rope theta, and
`query_pre_attn_scalar`."""

from __future__ import annotations

from typing import Any

from converters.errors import UnsupportedOptionError
from converters.families.decoder import DecoderStyle, decoder_config
from converters.families.llama import DECODER_READS
from converters.families.spec import FamilySpec, register
from converters.families.weights import LM_HEAD, KeyLayout, decoder_plan
from qlens_jax.models import ModelConfig

# transformers' `Gemma3TextConfig` defaults of the options that change the math. Official
# multimodal checkpoints (Gemma-3 4B/12B/27B) write a sparse `text_config` that relies on them.
DEFAULTS: dict[str, Any] = {
    "vocab_size": 262_208,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "final_logit_softcapping": None,
    "attn_logit_softcapping": None,
}
INERT = frozenset("n_positions max_window_layers use_sliding_window".split())
STYLE = DecoderStyle(
    activation_keys=("hidden_activation", "hidden_act"),
    default_activation="gelu_pytorch_tanh",
    gemma_norms=True,
    post_norms=True,
    qk_norm=True,
    tie_default=True,
    query_pre_attn_scalar=True,
    windows="layer_types",
    sliding_pattern_keys=("sliding_window_pattern", "_sliding_window_pattern"),
    default_sliding_pattern=6,
    final_softcap=True,
    default_rope_theta=1_000_000.0,
    local_rope_theta_key="rope_local_base_freq",
)

# Top-level options of the multimodal wrapper that only concern image inputs, which a
# text-only forward pass never reads (the vision tower and projector are not converted).
# `image_token_index` only matters for ids >= vocab_size, which text inputs cannot hold.
WRAPPER_IMAGE_KEYS = frozenset(
    "vision_config mm_tokens_per_image boi_token_index eoi_token_index image_token_index".split()
)
# Gemma3ForConditionalGeneration: files keep the original layout (transformers renames keys on
# load and back on save), the in-memory state dict has the module layout.
WRAPPER_LAYOUTS = (
    KeyLayout("language_model.model.", "language_model.lm_head.weight", ("vision_tower.", "multi_modal_projector.")),
    KeyLayout("model.language_model.", LM_HEAD, ("model.vision_tower.", "model.multi_modal_projector.")),
)


def build(raw: dict) -> ModelConfig:
    if raw.get("attn_logit_softcapping") is not None:
        # transformers' Gemma-3 attention stores this option but never applies it; refuse to guess.
        raise UnsupportedOptionError(
            "gemma3_text config option attn_logit_softcapping is set, but transformers' Gemma-3 does "
            "not apply it; remove it from config.json (official Gemma-3 configs have null)"
        )
    return decoder_config(raw, "gemma3_text", STYLE)


def check_wrapped(text: dict, wrapper: str) -> None:
    """Options of the text config that the wrapper's forward pass treats differently."""
    if text.get("final_logit_softcapping") is not None:
        # Gemma3ForConditionalGeneration returns lm_head(h) without the soft-cap its text model's
        # config names (Gemma3ForCausalLM applies it); refuse to pick one.
        raise UnsupportedOptionError(
            f"{wrapper} (multimodal) text_config option final_logit_softcapping is set, but transformers' "
            "Gemma3ForConditionalGeneration does not apply it; remove it (official Gemma-3 configs have null)"
        )


SPEC = register(
    FamilySpec(
        model_type="gemma3_text",
        reads=DECODER_READS
        | {
            "hidden_activation",
            "hidden_act",
            "attention_bias",
            "layer_types",
            "sliding_window_pattern",
            "_sliding_window_pattern",
            "rope_local_base_freq",
            "query_pre_attn_scalar",
            "sliding_window",
            "final_logit_softcapping",
            "attn_logit_softcapping",
        },
        required={"use_bidirectional_attention": (False, None)},
        inert=INERT,
        defaults=DEFAULTS,
        build=build,
        weights=decoder_plan,
        post_norms=True,
        torch_style="gemma",
        wrapper="gemma3",
        wrapper_keys=WRAPPER_IMAGE_KEYS,
        wrapper_layouts=WRAPPER_LAYOUTS,
        wrapper_check=check_wrapped,
    )
)
