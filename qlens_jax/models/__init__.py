"""Equinox transformers (GPT-2, Llama, Qwen-2/3, Gemma-3) exposing their residual stream."""

from qlens_jax.models.config import ModelConfig, ModelConfigError
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
    "ModelConfig",
    "ModelConfigError",
    "Norm",
    "Residuals",
    "Transformer",
    "attention_output",
    "attention_residual",
    "attention_z",
    "block_forward",
    "init_transformer",
    "mlp_input",
    "mlp_residual",
]
