"""Qwen-2 (`Qwen2ForCausalLM`): biases on q, k, v (not on the output projection); sliding
windows are not implemented (`use_sliding_window` must be false, `layer_types` all full)."""

from __future__ import annotations

from converters.families.decoder import DecoderStyle, decoder_config
from converters.families.llama import DECODER_READS
from converters.families.spec import FamilySpec, register
from converters.families.weights import decoder_plan

# `sliding_window` and `max_window_layers` only act with `use_sliding_window`, which must be
# false (transformers then sets `sliding_window` to None).
INERT = frozenset(
    """n_positions max_window_layers _sliding_window_pattern sliding_window_pattern rope_local_base_freq
    final_logit_softcapping attn_logit_softcapping query_pre_attn_scalar sliding_window""".split()
)
STYLE = DecoderStyle(qkv_bias=True, o_bias=False, windows="refused")

SPEC = register(
    FamilySpec(
        model_type="qwen2",
        reads=DECODER_READS | {"hidden_act", "layer_types"},
        required={"use_sliding_window": (False,)},
        inert=INERT,
        build=lambda raw: decoder_config(raw, "qwen2", STYLE),
        weights=decoder_plan,
    )
)
