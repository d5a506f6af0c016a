"""Full-size configs convert to models whose parameter count equals transformers' (no memory used)."""

import equinox as eqx
import jax
import numpy as np
import pytest
import torch
import transformers

from converters import model_config_from_hf
from qlens_jax.models import init_transformer

FULL_SIZE = {
    "gpt2-small": ("GPT2Config", "GPT2LMHeadModel", {}),
    "llama-3.2-1b": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            vocab_size=128256,
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            head_dim=64,
            tie_word_embeddings=True,
            max_position_embeddings=131072,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
        ),
    ),
    "qwen3-1.7b": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            tie_word_embeddings=True,
        ),
    ),
    # Qwen3-30B-A3B (Qwen-Scope's MoE model): 48 layers of 128 routed experts, 8 per token.
    "qwen3-30b-a3b": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            moe_intermediate_size=768,
            num_hidden_layers=48,
            num_attention_heads=32,
            num_key_value_heads=4,
            head_dim=128,
            num_experts=128,
            num_experts_per_tok=8,
            norm_topk_prob=True,
            max_position_embeddings=40960,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
    ),
    "gemma-3-1b": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            vocab_size=262144,
            hidden_size=1152,
            intermediate_size=6912,
            num_hidden_layers=26,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=256,
            sliding_window=512,
        ),
    ),
    "pythia-70m-deduped": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(
            vocab_size=50304,
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=6,
            num_attention_heads=8,
            rotary_pct=0.25,
            rotary_emb_base=10000,
            use_parallel_residual=True,
            tie_word_embeddings=False,
        ),
    ),
    # gpt-oss-20b: 24 layers of 32 routed experts with biases, attention sinks, transformers'
    # defaults for the rest (its shapes).
    "gpt-oss-20b": ("GptOssConfig", "GptOssForCausalLM", dict(num_hidden_layers=24, num_local_experts=32)),
}


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_parameter_count_matches_transformers(name):
    config_cls, model_cls, kwargs = FULL_SIZE[name]
    hf_config = getattr(transformers, config_cls)(**kwargs)
    with torch.device("meta"):
        hf_model = getattr(transformers, model_cls)(hf_config)
    hf_count = sum(p.numel() for p in hf_model.parameters())
    config = model_config_from_hf(hf_config.to_dict())
    shapes = eqx.filter_eval_shape(init_transformer, config, jax.random.key(0))
    params = eqx.tree_at(lambda m: m.meta, shapes, None)
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert count == hf_count
