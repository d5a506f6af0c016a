"""gpt-oss (`GptOssForCausalLM`: gpt-oss-20b / 120b): a Llama-style decoder with attention
biases and a learned sink logit per head in every attention softmax, layers alternating
sliding-window and full attention (`layer_types`), YaRN rotary positions, and routed experts
in every MLP (`qlens_jax.models.RoutedMLP`): a biased router whose `num_experts_per_tok`
largest logits are softmaxed, experts with biases and the clamped SwiGLU
`(clip(up, +-limit) + 1) * g sigmoid(alpha g)`, `g = min(gate, limit)`.

Checkpoints in the float layout `GptOssForCausalLM.save_pretrained` writes convert (experts
stacked, gate and up interleaved in `gate_up_proj`); the published MXFP4 files are refused by
their `quantization_config`, with how to dequantize them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from converters.errors import UnsupportedOptionError
from converters.families.decoder import DecoderStyle, decoder_config
from converters.families.llama import DECODER_READS
from converters.families.qwen3_moe import num_experts
from converters.families.spec import FamilySpec, register
from converters.families.weights import Source, decoder_plan, transpose
from qlens_jax.models import ModelConfig

READS = DECODER_READS | frozenset(
    """num_local_experts num_experts num_experts_per_tok swiglu_alpha swiglu_limit sliding_window
    layer_types attention_bias quantization_config""".split()
)
# transformers' gpt-oss experts apply the clamped SwiGLU whatever `hidden_act` says; the router's
# training outputs and their loss do not change the logits; `experts_per_token` and
# `initial_context_length` are OpenAI's names in the official config.json, which transformers
# never reads (it reads `num_experts_per_tok` and the YaRN parameters).
INERT = frozenset(
    "hidden_act output_router_logits router_aux_loss_coef experts_per_token initial_context_length".split()
)
# transformers' `GptOssConfig` defaults of the options that change the math (gpt-oss-20b's
# shapes, 128 experts as transformers' default). `rope_parameters` is resolved by `rope`.
DEFAULTS: dict[str, Any] = {
    "num_hidden_layers": 36,
    "vocab_size": 201_088,
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "head_dim": 64,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "sliding_window": 128,
    "tie_word_embeddings": False,
    "max_position_embeddings": 131_072,
    "rms_norm_eps": 1e-5,
    "num_experts_per_tok": 4,
    "swiglu_alpha": 1.702,
    "swiglu_limit": 7.0,
    "attention_bias": True,
}
NUM_EXPERTS_DEFAULT = 128
ROPE_THETA_DEFAULT = 150_000.0
# transformers' YaRN default when a config gives neither `rope_parameters` nor `rope_scaling`.
YARN_DEFAULT = {
    "rope_type": "yarn",
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 4096,
}
# Layers alternate sliding and full attention, starting with a sliding one (`layer_types` when given).
STYLE = DecoderStyle(
    activation_keys=(), windows="layer_types", default_sliding_pattern=2, default_rope_theta=ROPE_THETA_DEFAULT
)


def rope(raw: dict[str, Any]) -> dict[str, Any]:
    """The rope parameters transformers uses: `rope_parameters`, else the legacy `rope_scaling`
    with `rope_theta`, else YaRN's defaults; `rope_theta` defaults to 150,000."""
    params = dict(raw.get("rope_parameters") or raw.get("rope_scaling") or YARN_DEFAULT)
    params.setdefault("rope_theta", raw.get("rope_theta", ROPE_THETA_DEFAULT))
    return params


def _refuse_quantized(raw: dict[str, Any]) -> None:
    quantization = raw.get("quantization_config")
    if quantization is not None:
        method = quantization.get("quant_method") if isinstance(quantization, dict) else quantization
        raise UnsupportedOptionError(
            f"gpt_oss config option quantization_config (quant_method={method!r}) is not supported: "
            "dequantize the checkpoint first (transformers: from_pretrained(..., "
            "quantization_config=Mxfp4Config(dequantize=True)), then save_pretrained)"
        )


def build(raw: dict[str, Any]) -> ModelConfig:
    _refuse_quantized(raw)
    config = decoder_config({**raw, "rope_parameters": rope(raw)}, "gpt_oss", STYLE)
    n_experts = num_experts(raw, "gpt_oss", NUM_EXPERTS_DEFAULT)
    k = raw["num_experts_per_tok"]
    if not isinstance(k, int) or not 0 < k <= n_experts:
        raise UnsupportedOptionError(
            f"gpt_oss config option num_experts_per_tok={k!r} is not supported (1 .. num_local_experts={n_experts})"
        )
    alpha, limit = raw["swiglu_alpha"], raw["swiglu_limit"]
    if not isinstance(limit, (int, float)) or limit <= 0:
        raise UnsupportedOptionError(f"gpt_oss config option swiglu_limit={limit!r} is not supported (a number > 0)")
    if not isinstance(alpha, (int, float)):
        raise UnsupportedOptionError(f"gpt_oss config option swiglu_alpha={alpha!r} is not supported (a number)")
    return dataclasses.replace(
        config,
        activation="silu",
        n_experts=n_experts,
        experts_per_token=k,
        router="topk_softmax",
        router_bias=True,
        mlp_bias=True,
        swiglu_alpha=float(alpha),
        swiglu_limit=float(limit),
        attn_sinks=True,
    )


def plan(c: ModelConfig) -> dict[str, Source | tuple[Source, ...]]:
    """Llama's attention and norms plus the sinks, the router and the stacked experts
    (`mlp.experts.gate_up_proj [experts, d_model, 2 d_mlp]`, gate and up interleaved: gate the
    even columns; `down_proj [experts, d_mlp, d_model]`; biases beside them)."""
    layer = "layers.{i}."
    experts = layer + "mlp.experts."
    gate, up = (lambda x: x[..., ::2]), (lambda x: x[..., 1::2])
    return {
        **{k: v for k, v in decoder_plan(c).items() if not k.startswith("blocks.mlp.")},
        "blocks.attn.sinks": Source(layer + "self_attn.sinks"),
        "blocks.mlp.router": Source(layer + "mlp.router.weight", transpose),
        "blocks.mlp.router_bias": Source(layer + "mlp.router.bias"),
        "blocks.mlp.gate_proj": Source(experts + "gate_up_proj", gate),
        "blocks.mlp.up_proj": Source(experts + "gate_up_proj", up),
        "blocks.mlp.gate_bias": Source(experts + "gate_up_proj_bias", gate),
        "blocks.mlp.up_bias": Source(experts + "gate_up_proj_bias", up),
        "blocks.mlp.down_proj": Source(experts + "down_proj"),
        "blocks.mlp.down_bias": Source(experts + "down_proj_bias"),
    }


SPEC = register(
    FamilySpec(
        model_type="gpt_oss",
        reads=READS,
        inert=INERT,
        defaults=DEFAULTS,
        build=build,
        weights=plan,
    )
)
