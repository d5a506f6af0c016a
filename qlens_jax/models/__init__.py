"""Equinox transformers (GPT-2, Llama, Mistral, Qwen-2/3, Qwen3-MoE, Qwen3.5, Gemma-1/2/3, GPT-NeoX) exposing their residual stream."""

from qlens_jax.models.config import ModelConfig, ModelConfigError
from qlens_jax.models.linear_attention import GatedDeltaNet
from qlens_jax.models.mixer import PositionMixer
from qlens_jax.models.mlp import MixedMLP, MLPCost, ResidualMLP, RoutedMLP, autodiff_jacobian, mlp_cost
from qlens_jax.models.transformer import (
    MLP,
    Attention,
    Block,
    LayerMeta,
    Linear,
    Norm,
    Residuals,
    Transformer,
    attention_output,
    attention_residual,
    attention_z,
    block_forward,
    block_output,
    init_transformer,
    mixer_floats,
    mlp_block_input,
    mlp_input,
    mlp_residual,
)

__all__ = [
    "Attention",
    "Block",
    "GatedDeltaNet",
    "LayerMeta",
    "Linear",
    "MLP",
    "MLPCost",
    "ModelConfig",
    "ModelConfigError",
    "Norm",
    "PositionMixer",
    "ResidualMLP",
    "Residuals",
    "MixedMLP",
    "RoutedMLP",
    "Transformer",
    "attention_output",
    "attention_residual",
    "attention_z",
    "autodiff_jacobian",
    "block_forward",
    "block_output",
    "init_transformer",
    "mlp_block_input",
    "mlp_cost",
    "mlp_input",
    "mlp_residual",
    "mixer_floats",
]
