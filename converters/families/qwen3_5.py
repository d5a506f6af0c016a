"""Qwen3.5 (`Qwen3_5ForCausalLM`, and the language model of the multimodal
`Qwen3_5ForConditionalGeneration`, as its official checkpoints are saved) and Qwen3.5-MoE
(`Qwen3_5MoeForCausalLM` / `Qwen3_5MoeForConditionalGeneration`): Qwen-Scope's Qwen3.5 models.

Hybrid layers (`layer_types`, else every `full_attention_interval`-th layer full): Gated DeltaNet
linear attention (`qlens_jax.models.linear_attention`) and softmax attention with q/k norms and a
sigmoid output gate computed by `q_proj` beside the query (per head `[query, gate]`); partial
rotary (`partial_rotary_factor`, default 0.25); zero-centred `(1 + w)` RMSNorms. The MoE variant
routes every layer's MLP (softmax over all experts, top `num_experts_per_tok`, always
renormalized) and adds a shared expert scaled by a sigmoid gate.

Multimodal RoPE (`mrope_section`, `mrope_interleaved`) rotates one section of each head by the
temporal, height and width position of an image patch; text tokens have the same position on all
three, so for text the sections agree and the rotation is plain RoPE (both keys are inert).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from converters.errors import ConversionError, UnsupportedOptionError
from converters.families.decoder import activation
from converters.families.llama import INERT as OTHER_FAMILIES_KEYS
from converters.families.spec import FamilySpec, register
from converters.families.weights import LM_HEAD, KeyLayout, Source, transpose
from converters.rope import rope_frequencies
from qlens_jax.models import ModelConfig

READS = frozenset(
    """vocab_size hidden_size intermediate_size num_hidden_layers num_attention_heads num_key_value_heads
    head_dim hidden_act rms_norm_eps max_position_embeddings tie_word_embeddings rope_parameters rope_theta
    partial_rotary_factor attention_bias layer_types full_attention_interval linear_conv_kernel_dim
    linear_key_head_dim linear_value_head_dim linear_num_key_heads linear_num_value_heads""".split()
)
MOE_READS = (READS - {"intermediate_size"}) | {
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "num_experts",
    "num_experts_per_tok",
}
# Keys transformers' Qwen3.5 never reads: other families' options, the multi-token-prediction
# head's (its `mtp.*` weights are not loaded either) and, for the MoE, training-only router outputs.
INERT = (OTHER_FAMILIES_KEYS - {"layer_types"}) | {"mtp_num_hidden_layers", "mtp_use_dedicated_embeddings"}
# The MoE's `intermediate_size` (some configs carry one) sizes no module: every MLP is routed.
MOE_INERT = INERT | {"output_router_logits", "router_aux_loss_coef", "intermediate_size"}
# transformers' defaults of the options that change the math (`Qwen3_5TextConfig`,
# `Qwen3_5MoeTextConfig`), for configs that leave them out.
DEFAULTS: dict[str, Any] = {
    "vocab_size": 248_320,
    "hidden_size": 4096,
    "intermediate_size": 12_288,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 256,
    "hidden_act": "silu",
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32_768,
    "tie_word_embeddings": False,
    "attention_bias": False,
    "linear_conv_kernel_dim": 4,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 32,
}
MOE_DEFAULTS: dict[str, Any] = {
    **{k: v for k, v in DEFAULTS.items() if k != "intermediate_size"},
    "hidden_size": 2048,
    "num_hidden_layers": 40,
    "num_key_value_heads": 2,
    "moe_intermediate_size": 512,
    "shared_expert_intermediate_size": 512,
    "num_experts_per_tok": 8,
    "num_experts": 256,
}
LAYER_TYPES = ("linear_attention", "full_attention")
ROPE_KEYS = frozenset("rope_type rope_theta partial_rotary_factor mrope_section mrope_interleaved".split())


def layer_types(raw: dict[str, Any], family: str) -> list[str]:
    """Each layer's mixer: `layer_types`, else every `full_attention_interval`-th layer full (transformers' default)."""
    n_layers = raw["num_hidden_layers"]
    types = raw.get("layer_types")
    if types is None:
        interval = raw.get("full_attention_interval", 4)
        types = ["linear_attention" if (i + 1) % interval else "full_attention" for i in range(n_layers)]
    if len(types) != n_layers:
        raise ConversionError(f"{family} config layer_types has {len(types)} entries for {n_layers} layers")
    unknown = sorted(set(types) - set(LAYER_TYPES))
    if unknown:
        raise UnsupportedOptionError(
            f"{family} config option layer_types has {unknown} (supported: {', '.join(LAYER_TYPES)})"
        )
    return list(types)


def rope(raw: dict[str, Any], family: str, head_dim: int) -> tuple[int, np.ndarray]:
    """`(rotary dimensions, inverse frequencies)`: default RoPE on the leading
    `int(head_dim * partial_rotary_factor)` dimensions of each head."""
    params = dict(raw.get("rope_parameters") or {})
    params.setdefault("rope_theta", raw.get("rope_theta", 10_000.0))
    params.setdefault("partial_rotary_factor", raw.get("partial_rotary_factor", 0.25))
    if params.get("rope_type", "default") != "default":
        raise UnsupportedOptionError(
            f"{family} config option rope_type={params['rope_type']!r} is not supported (supported: 'default')"
        )
    unknown = sorted(set(params) - ROPE_KEYS)
    if unknown:
        raise UnsupportedOptionError(f"{family} config rope_parameters option(s) not supported: {', '.join(unknown)}")
    factor = params["partial_rotary_factor"]
    dim = int(head_dim * factor)
    if dim <= 0 or dim % 2:
        raise UnsupportedOptionError(
            f"{family} config option partial_rotary_factor={factor!r} gives {dim} rotary dimensions of "
            f"head_dim={head_dim}; only an even, positive number is supported"
        )
    inv_freq, _ = rope_frequencies({"rope_type": "default", "rope_theta": float(params["rope_theta"])}, dim, 0)
    return dim, inv_freq


def build(raw: dict[str, Any], family: str) -> ModelConfig:
    """The `ModelConfig` of a checked Qwen3.5 (`qwen3_5_text`) or Qwen3.5-MoE config."""
    d, n_layers, n_heads = raw["hidden_size"], raw["num_hidden_layers"], raw["num_attention_heads"]
    head_dim = raw.get("head_dim") or d // n_heads
    types = layer_types(raw, family)
    rotary, inv_freq = rope(raw, family, head_dim)
    bias = bool(raw["attention_bias"])
    config = ModelConfig(
        model_type=family,
        vocab_size=raw["vocab_size"],
        d_model=d,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=raw.get("num_key_value_heads") or n_heads,
        head_dim=head_dim,
        d_mlp=raw.get("intermediate_size", 0),
        norm="rmsnorm",
        norm_eps=raw["rms_norm_eps"],
        norm_offset=1.0,
        activation=activation(raw["hidden_act"]),
        gated_mlp=True,
        positional="rope",
        max_positions=raw["max_position_embeddings"],
        tie_word_embeddings=bool(raw["tie_word_embeddings"]),
        qkv_bias=bias,
        o_bias=bias,
        qk_norm=True,
        attn_output_gate=True,
        rotary_dim=rotary if rotary < head_dim else None,
        linear_layers=tuple(t == "linear_attention" for t in types),
        linear_key_heads=raw["linear_num_key_heads"],
        linear_value_heads=raw["linear_num_value_heads"],
        linear_key_dim=raw["linear_key_head_dim"],
        linear_value_dim=raw["linear_value_head_dim"],
        linear_conv_kernel=raw["linear_conv_kernel_dim"],
        attn_scales=(head_dim**-0.5,) * n_layers,
        sliding_windows=(0,) * n_layers,
        rope_inv_freq=(tuple(float(x) for x in inv_freq),) * n_layers,
        rope_scales=(1.0,) * n_layers,
    )
    if family != "qwen3_5_moe_text":
        return config
    n_experts, k, shared = raw["num_experts"], raw["num_experts_per_tok"], raw["shared_expert_intermediate_size"]
    if not isinstance(k, int) or not 0 < k <= n_experts:
        raise UnsupportedOptionError(
            f"{family} config option num_experts_per_tok={k!r} is not supported (1 .. num_experts={n_experts})"
        )
    if not isinstance(shared, int) or shared <= 0:
        raise UnsupportedOptionError(f"{family} config option shared_expert_intermediate_size={shared!r} must be > 0")
    return dataclasses.replace(
        config,
        d_mlp=raw["moe_intermediate_size"],
        n_experts=n_experts,
        experts_per_token=k,
        router="softmax_topk",
        router_renorm=True,
        shared_expert_d_mlp=shared,
    )


def _head_part(part: int, n_heads: int, head_dim: int, weight: bool):
    """Part `part` (0: query, 1: gate) of Qwen3.5's `q_proj` (`[heads (query, gate) head_dim, d]`),
    as `[d, heads head_dim]` (a weight) or `[heads head_dim]` (a bias)."""

    def take(x: np.ndarray) -> np.ndarray:
        rows = x.reshape(n_heads, 2, head_dim, *x.shape[1:])[:, part].reshape(n_heads * head_dim, *x.shape[1:])
        return rows.T if weight else rows

    return take


def plan(c: ModelConfig) -> dict[str, Source | tuple[Source, ...]]:
    """Weights of a hybrid model: every stacked leaf has a slice per layer; the softmax
    attention's leaves are zero on linear-attention layers and the Gated DeltaNet's on the others,
    and the output projection comes from `self_attn.o_proj` or `linear_attn.out_proj`."""
    layer = "layers.{i}."
    full = tuple(i for i, linear in enumerate(c.linear_layers) if not linear)
    linear = tuple(i for i, is_linear in enumerate(c.linear_layers) if is_linear)
    attn = lambda name, transform=transpose: Source(layer + f"self_attn.{name}", transform, layers=full)
    delta = lambda name, transform=transpose: Source(layer + f"linear_attn.{name}", transform, layers=linear)
    heads = (c.n_heads, c.head_dim)
    out = {
        "embed_tokens": Source("embed_tokens.weight"),
        "final_norm.weight": Source("norm.weight"),
        "blocks.attn_norm.weight": Source(layer + "input_layernorm.weight"),
        "blocks.mlp_norm.weight": Source(layer + "post_attention_layernorm.weight"),
        "blocks.attn.q_proj.weight": attn("q_proj.weight", _head_part(0, *heads, True)),
        "blocks.attn.gate_proj.weight": attn("q_proj.weight", _head_part(1, *heads, True)),
        "blocks.attn.q_proj.bias": attn("q_proj.bias", _head_part(0, *heads, False)),
        "blocks.attn.gate_proj.bias": attn("q_proj.bias", _head_part(1, *heads, False)),
        "blocks.attn.k_proj.weight": attn("k_proj.weight"),
        "blocks.attn.v_proj.weight": attn("v_proj.weight"),
        "blocks.attn.k_proj.bias": attn("k_proj.bias", lambda x: x),
        "blocks.attn.v_proj.bias": attn("v_proj.bias", lambda x: x),
        "blocks.attn.o_proj.bias": attn("o_proj.bias", lambda x: x),
        "blocks.attn.q_norm.weight": attn("q_norm.weight", lambda x: x),
        "blocks.attn.k_norm.weight": attn("k_norm.weight", lambda x: x),
        "blocks.attn.o_proj.weight": (
            Source(layer + "self_attn.o_proj.weight", transpose),
            Source(layer + "linear_attn.out_proj.weight", transpose),
        ),
        "blocks.linear_attn.in_qkv.weight": delta("in_proj_qkv.weight"),
        "blocks.linear_attn.in_z.weight": delta("in_proj_z.weight"),
        "blocks.linear_attn.in_b.weight": delta("in_proj_b.weight"),
        "blocks.linear_attn.in_a.weight": delta("in_proj_a.weight"),
        "blocks.linear_attn.conv": delta("conv1d.weight", lambda x: x[:, 0, :]),
        "blocks.linear_attn.dt_bias": delta("dt_bias", lambda x: x),
        "blocks.linear_attn.A_log": delta("A_log", lambda x: x),
        "blocks.linear_attn.norm": delta("norm.weight", lambda x: x),
    }
    mlp = "layers.{i}.mlp."
    if c.n_experts:
        f = c.d_mlp
        by_expert = lambda name: Source(mlp + f"experts.{{e}}.{name}.weight", transpose, c.n_experts)
        stacked = lambda name, rows: Source(mlp + f"experts.{name}", lambda x: np.swapaxes(x[:, rows], 1, 2))
        out |= {
            "blocks.mlp.router": Source(mlp + "gate.weight", transpose),
            "blocks.mlp.gate_proj": (by_expert("gate_proj"), stacked("gate_up_proj", slice(0, f))),
            "blocks.mlp.up_proj": (by_expert("up_proj"), stacked("gate_up_proj", slice(f, 2 * f))),
            "blocks.mlp.down_proj": (by_expert("down_proj"), stacked("down_proj", slice(None))),
            "blocks.mlp.shared_gate": Source(mlp + "shared_expert_gate.weight", transpose),
        }
        mlp += "shared_expert."
        prefix = "blocks.mlp.shared."
    else:
        prefix = "blocks.mlp."
    for name in ("gate", "up", "down"):
        out[f"{prefix}{name}_proj.weight"] = Source(mlp + f"{name}_proj.weight", transpose)
    if not c.tie_word_embeddings:
        out["lm_head"] = Source(LM_HEAD)
    return out


# The multimodal wrapper's top-level options that only concern images and video (the vision
# tower is not converted), and where its checkpoints keep the language model: the published
# files and transformers' in-memory state dict agree. `mtp.*`: the multi-token-prediction head,
# which transformers does not load either.
WRAPPER_KEYS = frozenset(
    "vision_config image_token_id video_token_id vision_start_token_id vision_end_token_id".split()
)
WRAPPER_LAYOUTS = (KeyLayout("model.language_model.", LM_HEAD, ("model.visual.", "mtp.")),)


def _spec(model_type: str, wrapper: str, reads, inert, defaults) -> FamilySpec:
    return register(
        FamilySpec(
            model_type=model_type,
            reads=frozenset(reads),
            required={"attn_output_gate": (True,)},
            inert=frozenset(inert),
            defaults=defaults,
            build=lambda raw: build(raw, model_type),
            weights=plan,
            buffer_keys=(),
            wrapper=wrapper,
            wrapper_keys=WRAPPER_KEYS,
            wrapper_layouts=WRAPPER_LAYOUTS,
            wrapper_tie_default=False,
        )
    )


SPEC = _spec("qwen3_5_text", "qwen3_5", READS, INERT, DEFAULTS)
MOE_SPEC = _spec("qwen3_5_moe_text", "qwen3_5_moe", MOE_READS, MOE_INERT, MOE_DEFAULTS)
