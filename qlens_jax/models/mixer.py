"""The interface through which the lens sweeps linearize a block's position-mixing module.

A block mixes positions with softmax attention (`transformer.Attention`) or, in Qwen3.5's hybrid
layers, Gated DeltaNet linear attention (`linear_attention.GatedDeltaNet`). Both are a
`PositionMixer`: `mix` maps the block's normalized input (one sequence) to the `z` site, the
input of the block's output projection, and `linearization_floats` says how many floats per
token and layer its linearization keeps alive, for memory planning. `transformer.attention_z`
picks the layer's mixer (`lax.cond` on `LayerMeta.linear` in a hybrid model), and the sweeps take
the JVP / VJP of that function by autodiff (of the softmax, or of the recurrence's chunked scan),
so a new mixer changes nothing in `qlens_jax.lens`.
"""

from __future__ import annotations

import abc
from typing import Any

import equinox as eqx
from jaxtyping import Array, Bool, Float

from qlens_jax.models.config import ModelConfig


class PositionMixer(eqx.Module):
    """A position-mixing module up to its output projection."""

    @abc.abstractmethod
    def mix(self, x: Float[Array, "seq d_model"], mask: Bool[Array, " seq"], meta: Any) -> Float[Array, "seq z_width"]:
        """The `z` site at every position of one sequence from the normalized input `x`;
        `meta` is the layer's `transformer.LayerMeta`."""

    @staticmethod
    @abc.abstractmethod
    def linearization_floats(config: ModelConfig, seq_len: int) -> int:
        """Floats per token and layer that its linearization keeps (reverse mode)."""
