"""Pieces of weight plans that several families share: `Source`, tensor transforms, the
unembedding's plan key, `KeyLayout`, and the plan of Llama-style decoders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qlens_jax.models import ModelConfig

# The plans' key of the unembedding; `KeyLayout.lm_head` says where a checkpoint stores it.
LM_HEAD = "lm_head.weight"

identity = lambda x: x
transpose = lambda x: x.T


def split(part: int, parts: int = 3) -> Callable[[np.ndarray], np.ndarray]:
    """Part `part` of `parts` equal slices along the last axis (GPT-2's fused `c_attn`)."""
    return lambda x: np.split(x, parts, axis=-1)[part]


@dataclass(frozen=True)
class Source:
    """Leaf filled from `key` (with `{i}` for the layer of stacked leaves) through `transform`.

    `experts > 0`: `key` also holds `{e}`, and each layer's slice stacks that many experts'
    tensors (routed experts saved one module per expert). A plan may give a leaf a tuple of
    sources, the layouts a checkpoint may use: the first whose tensor is there fills it (for
    stacked leaves, layer by layer).

    `layers`: the layers whose checkpoint has the tensor (None: all); a stacked leaf is zero in
    the others, a module those layers do not run (Qwen3-MoE's dense layers beside routed ones,
    `models.mlp.MixedMLP`; Qwen3.5's DeltaNet and softmax-attention layers)."""

    key: str
    transform: Callable[[np.ndarray], np.ndarray] = identity
    experts: int = 0
    layers: tuple[int, ...] | None = None

    def has_layer(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    @property
    def first_layer(self) -> int:
        """A layer whose checkpoint has the tensor (where a plan probes for its layout)."""
        return 0 if not self.layers else self.layers[0]


@dataclass(frozen=True)
class KeyLayout:
    """Where a checkpoint keeps the converted model's tensors."""

    base: str  # prefix of the base model's keys (`transformer.`, `model.`, ...)
    lm_head: str = LM_HEAD  # key of the untied unembedding
    ignored: tuple[str, ...] = ()  # key prefixes of the parts not converted (vision tower, ...)


def decoder_plan(c: ModelConfig) -> dict[str, Source]:
    """Llama-style decoders (`model.layers.{i}.self_attn.q_proj`, `mlp.gate_proj`, ...): Llama,
    Mistral, Qwen-2/3, Gemma-1/2/3. Gemma-2/3 (`post_norms`) name their four block norms
    differently: `post_attention_layernorm` is the attention's post-norm there."""
    layer = "layers.{i}."
    plan = {
        "embed_tokens": Source("embed_tokens.weight"),
        "final_norm.weight": Source("norm.weight"),
        "blocks.attn_norm.weight": Source(layer + "input_layernorm.weight"),
    }
    for name in ("q", "k", "v", "o"):
        plan[f"blocks.attn.{name}_proj.weight"] = Source(layer + f"self_attn.{name}_proj.weight", transpose)
        plan[f"blocks.attn.{name}_proj.bias"] = Source(layer + f"self_attn.{name}_proj.bias")
    for name in ("gate", "up", "down"):
        plan[f"blocks.mlp.{name}_proj.weight"] = Source(layer + f"mlp.{name}_proj.weight", transpose)
        plan[f"blocks.mlp.{name}_proj.bias"] = Source(layer + f"mlp.{name}_proj.bias")
    if c.qk_norm:
        plan["blocks.attn.q_norm.weight"] = Source(layer + "self_attn.q_norm.weight")
        plan["blocks.attn.k_norm.weight"] = Source(layer + "self_attn.k_norm.weight")
    if c.post_norms:
        plan["blocks.attn_post_norm.weight"] = Source(layer + "post_attention_layernorm.weight")
        plan["blocks.mlp_norm.weight"] = Source(layer + "pre_feedforward_layernorm.weight")
        plan["blocks.mlp_post_norm.weight"] = Source(layer + "post_feedforward_layernorm.weight")
    else:
        plan["blocks.mlp_norm.weight"] = Source(layer + "post_attention_layernorm.weight")
    if not c.tie_word_embeddings:
        plan["lm_head"] = Source(LM_HEAD)
    return plan
