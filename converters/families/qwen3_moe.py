"""Qwen3-MoE (`Qwen3MoeForCausalLM`: Qwen3-30B-A3B, Qwen-Scope's mixture-of-experts model):
Qwen-3's attention (q/k RMSNorm per head) with routed experts in every layer's MLP
(`qlens_jax.models.RoutedMLP`): router softmax over all experts, top `num_experts_per_tok`,
renormalized when `norm_topk_prob`; layers listed in `mlp_only_layers` or off the
`decoder_sparse_step` have a dense gated MLP of `intermediate_size` instead
(`qlens_jax.models.MixedMLP`). Sliding windows are not implemented (`use_sliding_window` must
be false).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from converters.errors import ConversionError, UnsupportedOptionError
from converters.families.decoder import DecoderStyle, decoder_config
from converters.families.llama import DECODER_READS
from converters.families.qwen2 import INERT as QWEN_INERT
from converters.families.spec import FamilySpec, register
from converters.families.weights import Source, decoder_plan, transpose
from qlens_jax.models import ModelConfig

EXPERT_READS = frozenset(
    """moe_intermediate_size num_experts num_local_experts num_experts_per_tok norm_topk_prob
    decoder_sparse_step mlp_only_layers""".split()
)
# `output_router_logits` and `router_aux_loss_coef` only add the router logits and their
# load-balancing loss to training outputs: the logits are the same whatever their values.
INERT = QWEN_INERT | {"output_router_logits", "router_aux_loss_coef"}
# transformers' `Qwen3MoeConfig` defaults of the options that change the math (Qwen3-30B-A3B's
# values). `num_experts` is filled in by `routed_experts`, after its alias.
DEFAULTS: dict[str, Any] = {
    "intermediate_size": 6144,
    "num_experts_per_tok": 8,
    "moe_intermediate_size": 768,
    "norm_topk_prob": False,
    "decoder_sparse_step": 1,
    "mlp_only_layers": [],
}
NUM_EXPERTS_DEFAULT = 128
STYLE = DecoderStyle(qk_norm=True)


def num_experts(raw: dict, family: str = "qwen3_moe", default: int = NUM_EXPERTS_DEFAULT) -> int:
    """`num_experts`, or `num_local_experts`: what transformers writes for it (an attribute alias)."""
    if "num_local_experts" in raw:
        if raw.get("num_experts", raw["num_local_experts"]) != raw["num_local_experts"]:
            raise ConversionError(
                f"{family} config has num_experts={raw['num_experts']} and num_local_experts="
                f"{raw['num_local_experts']}: the same option with two values"
            )
        return raw["num_local_experts"]
    return raw.get("num_experts", default)


def routed_experts(raw: dict[str, Any], n_layers: int) -> dict[str, Any]:
    """The routed-experts `ModelConfig` fields (`d_mlp`: each expert's width); `{}` when every
    layer is dense.

    transformers gives layer `i` routed experts when `i` is not in `mlp_only_layers`,
    `num_experts > 0` and `(i + 1) % decoder_sparse_step == 0`, else a dense MLP of width
    `intermediate_size`. All routed: `intermediate_size` is unused; all dense: the expert
    options are; a mix: `dense_mlp_layers` lists the dense layers (`models.mlp.MixedMLP`).
    """
    n_experts, step, dense_only = num_experts(raw), raw["decoder_sparse_step"], raw["mlp_only_layers"] or []
    if not isinstance(step, int) or step < 1:
        raise UnsupportedOptionError(
            f"qwen3_moe config option decoder_sparse_step={step!r} is not supported (an integer >= 1)"
        )
    routed = [i not in dense_only and n_experts > 0 and (i + 1) % step == 0 for i in range(n_layers)]
    if not any(routed):
        return {}
    dense = tuple(i for i, r in enumerate(routed) if not r)
    k = raw["num_experts_per_tok"]
    if not isinstance(k, int) or not 0 < k <= n_experts:
        raise UnsupportedOptionError(
            f"qwen3_moe config option num_experts_per_tok={k!r} is not supported (1 .. num_experts={n_experts})"
        )
    return dict(
        dense_mlp_layers=dense,
        d_mlp_dense=raw["intermediate_size"] if dense else 0,
        d_mlp=raw["moe_intermediate_size"],
        n_experts=n_experts,
        experts_per_token=k,
        router="softmax_topk",
        router_renorm=bool(raw["norm_topk_prob"]),
    )


def build(raw: dict[str, Any]) -> ModelConfig:
    config = decoder_config(raw, "qwen3_moe", STYLE)
    experts = routed_experts(raw, config.n_layers)
    return dataclasses.replace(config, **experts) if experts else config


def plan(c: ModelConfig) -> dict[str, Source | tuple[Source, ...]]:
    """Qwen-3's plan with the router and experts in either layout a checkpoint may have: one
    module per expert (`mlp.experts.{e}.gate_proj.weight [d_mlp, d_model]`: the published
    files, and what `save_pretrained` writes) or stacked (`mlp.experts.gate_up_proj [experts,
    2 d_mlp, d_model]`, gate rows first: transformers 5's in-memory state dict)."""
    decoder = decoder_plan(c)
    if not c.n_experts:
        return decoder
    layer, f = "layers.{i}.mlp.", c.d_mlp
    dense = c.dense_mlp_layers
    routed = tuple(i for i in range(c.n_layers) if i not in dense) if dense else None
    by_expert = lambda name: Source(layer + f"experts.{{e}}.{name}.weight", transpose, c.n_experts, routed)
    stacked = lambda name, rows: Source(
        layer + f"experts.{name}", lambda x: np.swapaxes(x[:, rows], 1, 2), layers=routed
    )
    experts = {
        "router": Source(layer + "gate.weight", transpose, layers=routed),
        "gate_proj": (by_expert("gate_proj"), stacked("gate_up_proj", slice(0, f))),
        "up_proj": (by_expert("up_proj"), stacked("gate_up_proj", slice(f, 2 * f))),
        "down_proj": (by_expert("down_proj"), stacked("down_proj", slice(None))),
    }
    plan = {k: v for k, v in decoder.items() if not k.startswith("blocks.mlp.")}
    if not dense:
        return plan | {f"blocks.mlp.{k}": v for k, v in experts.items()}
    # a mix (`models.mlp.MixedMLP`): each part read where the checkpoint has it, zero elsewhere
    dense_mlp = {
        k.replace("blocks.mlp.", "blocks.mlp.dense.", 1): dataclasses.replace(v, layers=dense)
        for k, v in decoder.items()
        if k.startswith("blocks.mlp.") and isinstance(v, Source)
    }
    return plan | {f"blocks.mlp.routed.{k}": v for k, v in experts.items()} | dense_mlp


SPEC = register(
    FamilySpec(
        model_type="qwen3_moe",
        reads=DECODER_READS | EXPERT_READS | {"hidden_act", "attention_bias"},
        required={"use_sliding_window": (False,)},
        inert=INERT,
        defaults=DEFAULTS,
        build=build,
        weights=plan,
    )
)
