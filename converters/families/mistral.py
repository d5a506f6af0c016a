"""Mistral (`MistralForCausalLM`): a Llama-style decoder whose every layer attends within
`sliding_window` positions (none when null), without attention biases."""

from __future__ import annotations

from typing import Any

from converters.families.decoder import DecoderStyle, decoder_config
from converters.families.llama import DECODER_READS
from converters.families.spec import FamilySpec, register
from converters.families.weights import decoder_plan

# transformers' `MistralConfig` defaults of the options that change the math: a config.json
# without `sliding_window` gets transformers' 4096.
DEFAULTS: dict[str, Any] = {
    "vocab_size": 32_000,
    "hidden_size": 4096,
    "intermediate_size": 14_336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 4096 * 32,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "sliding_window": 4096,
}
STYLE = DecoderStyle(windows="all")

SPEC = register(
    FamilySpec(
        model_type="mistral",
        reads=DECODER_READS | {"hidden_act", "sliding_window"},
        defaults=DEFAULTS,
        build=lambda raw: decoder_config(raw, "mistral", STYLE),
        weights=decoder_plan,
    )
)
