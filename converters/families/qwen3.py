"""Qwen-3 (`Qwen3ForCausalLM`): q/k RMSNorm per head; sliding windows are not implemented
(`use_sliding_window` must be false)."""

from __future__ import annotations

from converters.families.decoder import DecoderStyle, decoder_config
from converters.families.llama import DECODER_READS
from converters.families.qwen2 import INERT
from converters.families.spec import FamilySpec, register
from converters.families.weights import decoder_plan

STYLE = DecoderStyle(qk_norm=True, windows="refused")

SPEC = register(
    FamilySpec(
        model_type="qwen3",
        reads=DECODER_READS | {"hidden_act", "attention_bias", "layer_types"},
        required={"use_sliding_window": (False,)},
        inert=INERT,
        build=lambda raw: decoder_config(raw, "qwen3", STYLE),
        weights=decoder_plan,
    )
)
