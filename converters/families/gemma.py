"""Gemma-1 (`GemmaForCausalLM`): a Llama-style decoder with GeGLU (tanh-approximated GELU
gate), (1 + w) RMSNorms and the sqrt(d) embedding scale; no post-norms, no soft-caps, no
sliding windows."""

from __future__ import annotations

from typing import Any

from converters.families.decoder import DecoderStyle, decoder_config
from converters.families.llama import DECODER_READS
from converters.families.spec import FamilySpec, register
from converters.families.weights import decoder_plan

# transformers' `GemmaConfig` defaults of the options that change the math.
DEFAULTS: dict[str, Any] = {
    "vocab_size": 256_000,
    "hidden_size": 3072,
    "intermediate_size": 24_576,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "attention_bias": False,
}
# transformers' Gemma reads `hidden_act` only (official configs also carry `hidden_activation`).
INERT = frozenset({"hidden_activation"})
# transformers rewrites the legacy `hidden_act="gelu"` of the official releases to the tanh
# approximation they were trained with.
STYLE = DecoderStyle(
    default_activation="gelu_pytorch_tanh",
    activation_aliases=(("gelu", "gelu_pytorch_tanh"),),
    gemma_norms=True,
    tie_default=True,
)

SPEC = register(
    FamilySpec(
        model_type="gemma",
        reads=DECODER_READS | {"hidden_act", "attention_bias"},
        required={"use_bidirectional_attention": (False, None)},
        inert=INERT,
        defaults=DEFAULTS,
        build=lambda raw: decoder_config(raw, "gemma", STYLE),
        weights=decoder_plan,
    )
)
