"""Equinox transformers (GPT-2, Llama, Mistral, Qwen-2/3, Gemma-1/2/3, GPT-NeoX) exposing their residual stream."""

from qlens_jax.models.config import ModelConfig
from qlens_jax.models.mlp import MLPCost, ResidualMLP, autodiff_jacobian, mlp_cost
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
    block_output,
    init_transformer,
    mlp_block_input,
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
    "Norm",
    "ResidualMLP",
    "Residuals",
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
]
