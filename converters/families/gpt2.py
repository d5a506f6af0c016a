"""GPT-2 (`GPT2LMHeadModel`): LayerNorm with bias, learned positions, fused `c_attn`, Conv1D
weights stored `[in, out]`."""

from __future__ import annotations

from converters.families.decoder import activation
from converters.families.spec import FamilySpec, register
from converters.families.weights import LM_HEAD, Source, split
from qlens_jax.models import ModelConfig

READS = frozenset(
    """vocab_size n_embd n_layer n_head n_inner activation_function layer_norm_epsilon scale_attn_weights
    scale_attn_by_inverse_layer_idx n_positions max_position_embeddings tie_word_embeddings""".split()
)
# Options of other families that transformers' GPT-2 never reads.
INERT = frozenset(
    """max_window_layers _sliding_window_pattern sliding_window_pattern layer_types rope_parameters rope_theta
    rope_scaling rope_local_base_freq head_dim num_key_value_heads final_logit_softcapping attn_logit_softcapping
    query_pre_attn_scalar sliding_window use_sliding_window""".split()
)


def build(raw: dict) -> ModelConfig:
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
        activation=activation(raw.get("activation_function", "gelu_new")),
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


def weights(c: ModelConfig) -> dict[str, Source]:
    h = "h.{i}."
    plan = {
        "embed_tokens": Source("wte.weight"),
        "embed_positions": Source("wpe.weight"),
        "final_norm.weight": Source("ln_f.weight"),
        "final_norm.bias": Source("ln_f.bias"),
        "blocks.attn_norm.weight": Source(h + "ln_1.weight"),
        "blocks.attn_norm.bias": Source(h + "ln_1.bias"),
        "blocks.mlp_norm.weight": Source(h + "ln_2.weight"),
        "blocks.mlp_norm.bias": Source(h + "ln_2.bias"),
        "blocks.attn.o_proj.weight": Source(h + "attn.c_proj.weight"),
        "blocks.attn.o_proj.bias": Source(h + "attn.c_proj.bias"),
        "blocks.mlp.up_proj.weight": Source(h + "mlp.c_fc.weight"),
        "blocks.mlp.up_proj.bias": Source(h + "mlp.c_fc.bias"),
        "blocks.mlp.down_proj.weight": Source(h + "mlp.c_proj.weight"),
        "blocks.mlp.down_proj.bias": Source(h + "mlp.c_proj.bias"),
    }
    # GPT-2's Conv1D stores [in, out] with q, k, v concatenated along the output.
    for part, name in enumerate("qkv"):
        plan[f"blocks.attn.{name}_proj.weight"] = Source(h + "attn.c_attn.weight", split(part))
        plan[f"blocks.attn.{name}_proj.bias"] = Source(h + "attn.c_attn.bias", split(part))
    if not c.tie_word_embeddings:
        plan["lm_head"] = Source(LM_HEAD)
    return plan


SPEC = register(
    FamilySpec(
        model_type="gpt2",
        reads=READS,
        required={"add_cross_attention": (False,), "reorder_and_upcast_attn": (False, True)},
        inert=INERT,
        build=build,
        weights=weights,
        embed_key="wte.weight",
        torch_style="gpt2",
    )
)
