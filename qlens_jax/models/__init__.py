"""Equinox transformers (GPT-2, Llama, Mistral, Qwen-2/3, Qwen3-MoE, Gemma-1/2/3) exposing their residual stream."""

from qlens_jax.models.config import ModelConfig, ModelConfigError
from qlens_jax.models.mlp import MLPCost, ResidualMLP, RoutedMLP, autodiff_jacobian, mlp_cost
from qlens_jax.models.transformer import (
    Attention,
    Block,
    LayerMeta,
    Linear,
    MLP,
    Norm,
    Residuals,
    Transformer,
    attention_output,
    attention_residual,
    attention_z,
    block_forward,
    init_transformer,
    mlp_input,
    mlp_residual,
)

__all__ = [
    "Attention",
    "Block",
    "LayerMeta",
    "Linear",
    "MLP",
    "MLPCost",
    "ModelConfig",
    "ModelConfigError",
    "Norm",
    "ResidualMLP",
    "Residuals",
    "RoutedMLP",
    "Transformer",
    "attention_output",
    "attention_residual",
    "attention_z",
    "autodiff_jacobian",
    "block_forward",
    "init_transformer",
    "mlp_cost",
    "mlp_input",
    "mlp_residual",
]
