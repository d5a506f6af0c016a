"""Gemma-2 (`Gemma2ForCausalLM`; Gemma Scope's model): (1 + w) RMSNorms before and after both
modules, the sqrt(d) embedding scale, attention-logit and final-logit soft-capping,
alternating local (sliding) and global layers, and `query_pre_attn_scalar`. No q/k norms."""

from __future__ import annotations

from typing import Any

from converters.families.decoder import DecoderStyle, decoder_config
from converters.families.llama import DECODER_READS
from converters.families.spec import FamilySpec, register
from converters.families.weights import decoder_plan

# transformers' `Gemma2Config` defaults of the options that change the math: a config.json that
# leaves out a soft-cap gets transformers' 30 / 50, not none.
DEFAULTS: dict[str, Any] = {
    "vocab_size": 256_000,
    "hidden_size": 2304,
    "intermediate_size": 9216,
    "num_hidden_layers": 26,
    "num_attention_heads": 8,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "attention_bias": False,
    "query_pre_attn_scalar": 256,
    "sliding_window": 4096,
    "final_logit_softcapping": 30.0,
    "attn_logit_softcapping": 50.0,
}
# transformers' Gemma-2 reads `hidden_activation` only; official configs also carry `hidden_act`.
INERT = frozenset({"hidden_act"})
# Layers alternate sliding and global, starting with a sliding one (`layer_types` when given).
STYLE = DecoderStyle(
    activation_keys=("hidden_activation",),
    default_activation="gelu_pytorch_tanh",
    gemma_norms=True,
    post_norms=True,
    tie_default=True,
    query_pre_attn_scalar=True,
    windows="layer_types",
    default_sliding_pattern=2,
    final_softcap=True,
    attn_softcap=True,
)

SPEC = register(
    FamilySpec(
        model_type="gemma2",
        reads=DECODER_READS
        | {
            "hidden_activation",
            "attention_bias",
            "layer_types",
            "query_pre_attn_scalar",
            "sliding_window",
            "final_logit_softcapping",
            "attn_logit_softcapping",
        },
        required={"use_bidirectional_attention": (False, None)},
        inert=INERT,
        defaults=DEFAULTS,
        build=lambda raw: decoder_config(raw, "gemma2", STYLE),
        weights=decoder_plan,
        post_norms=True,
        torch_style="gemma",
    )
)
