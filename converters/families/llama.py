"""Llama (`LlamaForCausalLM`): the plain Llama-style decoder."""

from __future__ import annotations

from converters.families.decoder import DecoderStyle, decoder_config
from converters.families.spec import FamilySpec, register
from converters.families.weights import decoder_plan

# Keys every Llama-style family reads (shape, positions, rotary tables, tying).
DECODER_READS = frozenset(
    """vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads
    head_dim rms_norm_eps max_position_embeddings tie_word_embeddings rope_parameters rope_theta
    rope_scaling""".split()
)
# Options of other families that transformers' Llama never reads: a Llama config carrying
# soft-caps or windows runs without them there, and so here.
INERT = frozenset(
    """n_positions max_window_layers _sliding_window_pattern sliding_window_pattern rope_local_base_freq
    final_logit_softcapping attn_logit_softcapping query_pre_attn_scalar sliding_window
    use_sliding_window layer_types""".split()
)
STYLE = DecoderStyle()

SPEC = register(
    FamilySpec(
        model_type="llama",
        reads=DECODER_READS | {"hidden_act", "attention_bias", "mlp_bias"},
        inert=INERT,
        build=lambda raw: decoder_config(raw, "llama", STYLE),
        weights=decoder_plan,
    )
)
