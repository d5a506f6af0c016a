"""Tiny seeded Hugging Face models of every supported architecture, for parity tests.

Weights are random but not tame: norms and biases are perturbed away from their identity
initialization and the init scale is large enough that logits are O(1), so a wrong norm,
bias or rotary detail shows up well above the 1e-4 tolerance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROPE_LLAMA3 = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,
}
ROPE_YARN = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 8}

# name -> (config class name, model class name, config kwargs)
ARCHITECTURES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=48, n_layer=3, n_head=4, n_positions=64)),
    "gpt2-untied-scaled": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(
            n_embd=48,
            n_layer=2,
            n_head=4,
            n_positions=64,
            tie_word_embeddings=False,
            scale_attn_by_inverse_layer_idx=True,
            activation_function="gelu",
            layer_norm_epsilon=1e-3,
            n_inner=80,
            scale_attn_weights=False,
        ),
    ),
    "llama-gqa2-llama3rope": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            attention_bias=True,
            mlp_bias=True,
            rope_parameters=ROPE_LLAMA3,
        ),
    ),
    "llama-mha-tied-linear": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
        ),
    ),
    "qwen2-yarn": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters=ROPE_YARN,
            max_position_embeddings=32,
            head_dim=16,
            hidden_act="gelu",
            rms_norm_eps=1e-3,
            tie_word_embeddings=True,
        ),
    ),
    "qwen3-gqa4-tied": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            tie_word_embeddings=True,
        ),
    ),
    # Routed experts: top-k < experts so routing matters, norm_topk_prob true and false.
    "qwen3moe-top2-renorm": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            hidden_size=48,
            moe_intermediate_size=24,
            num_experts=6,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
        ),
    ),
    "qwen3moe-top3-tied": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            hidden_size=48,
            moe_intermediate_size=16,
            num_experts=5,
            num_experts_per_tok=3,
            norm_topk_prob=False,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=12,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
        ),
    ),
    # Every option the family reads for routed layers set to a value that changes the logits
    # (tests/models/test_families.py).
    "qwen3moe-every-key": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            hidden_size=48,
            moe_intermediate_size=24,
            num_experts=6,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            attention_bias=True,
            hidden_act="gelu",
            rms_norm_eps=1e-3,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
        ),
    ),
    # Dense MLP layers beside routed ones, both keys biting: decoder_sparse_step=2 routes layers
    # 1 and 3, mlp_only_layers=[3] takes layer 3 back (routed: 1; dense of intermediate_size: 0, 2, 3).
    "qwen3moe-mixed": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=40,
            moe_intermediate_size=24,
            num_experts=6,
            num_experts_per_tok=2,
            norm_topk_prob=True,
            decoder_sparse_step=2,
            mlp_only_layers=[3],
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            attention_bias=True,
            hidden_act="gelu",
            rms_norm_eps=1e-3,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
        ),
    ),
    # Every layer listed in mlp_only_layers: a dense Qwen3-MoE (Qwen3MoeMLP of intermediate_size).
    "qwen3moe-all-dense-bias": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=40,
            moe_intermediate_size=16,
            num_experts=4,
            num_experts_per_tok=2,
            mlp_only_layers=[0, 1],
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=12,
            attention_bias=True,
        ),
    ),
    "gemma3-sliding": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=4,
            query_pre_attn_scalar=12,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1000000.0},
            },
        ),
    ),
    "gemma3-softcap": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=24,
            sliding_window=3,
            final_logit_softcapping=3.0,
            tie_word_embeddings=False,
        ),
    ),
    # GPT-NeoX: parallel attention and MLP, rotary on half of each head, a rotary base far from
    # the default; and sequential blocks with a quarter rotated, tied embeddings, no attention
    # bias, tanh GELU and a wide LayerNorm epsilon: every key the family reads, off its default.
    "neox-parallel": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=4,
            rotary_pct=0.5,
            rotary_emb_base=500,
            use_parallel_residual=True,
        ),
    ),
    "neox-sequential": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=3,
            rotary_pct=0.5,
            rotary_emb_base=300,
            use_parallel_residual=False,
            tie_word_embeddings=True,
            attention_bias=False,
            hidden_act="gelu_new",
            layer_norm_eps=1e-2,
        ),
    ),
    # Every option the family reads set to a value that changes the logits (tests/models/test_families.py).
    "llama-every-key": (
        "LlamaConfig",
        "LlamaForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            hidden_act="gelu",
            rms_norm_eps=1e-3,
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
        ),
    ),
    "qwen3-every-key": (
        "Qwen3Config",
        "Qwen3ForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            hidden_act="gelu",
            rms_norm_eps=1e-3,
            attention_bias=True,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
        ),
    ),
    "gemma3-every-key": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=3,
            query_pre_attn_scalar=10,
            final_logit_softcapping=2.0,
            attention_bias=True,
            hidden_activation="gelu",
            rms_norm_eps=1e-3,
            tie_word_embeddings=False,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 300.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 5000.0},
            },
        ),
    ),
    # Every option of the family set to a value that changes the logits: soft-caps that bite,
    # a window shorter than the test sequences, a query scalar and a head width that are not
    # the defaults, attention biases, exact GELU, a rope theta of its own.
    "gemma2-softcaps": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=3,
            query_pre_attn_scalar=10,
            attn_logit_softcapping=1.0,
            final_logit_softcapping=2.0,
            attention_bias=True,
            hidden_activation="gelu",
            rms_norm_eps=1e-3,
            tie_word_embeddings=False,
            layer_types=["sliding_attention", "full_attention", "full_attention", "sliding_attention"],
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        ),
    ),
    # The legacy `hidden_act="gelu"`, which transformers reads as the tanh approximation.
    "gemma-geglu": (
        "GemmaConfig",
        "GemmaForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            hidden_act="gelu",
            attention_bias=True,
            rms_norm_eps=1e-3,
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
        ),
    ),
    "mistral-sliding": (
        "MistralConfig",
        "MistralForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=3,
            rms_norm_eps=1e-3,
            hidden_act="gelu",
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        ),
    ),
    # gpt-oss: every option the family reads off transformers' default and biting (a SwiGLU clamp
    # that cuts the tiny model's gate and up values, a window shorter than the test sequences,
    # its own layer pattern and YaRN parameters); attention sinks, router and expert biases.
    "gptoss-every-key": (
        "GptOssConfig",
        "GptOssForCausalLM",
        dict(
            hidden_size=32,
            intermediate_size=16,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            num_local_experts=4,
            num_experts_per_tok=2,
            swiglu_alpha=1.3,
            swiglu_limit=1.0,
            sliding_window=3,
            layer_types=["full_attention", "sliding_attention", "sliding_attention"],
            attention_bias=False,
            rms_norm_eps=1e-3,
            tie_word_embeddings=True,
            max_position_embeddings=32,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 500.0,
                "factor": 4.0,
                "beta_fast": 16.0,
                "beta_slow": 2.0,
                "truncate": False,
                "original_max_position_embeddings": 8,
            },
        ),
    ),
    # transformers' defaults of the options (attention biases, alternating windows, its YaRN
    # with a rope base of 150,000) at a tiny size.
    "gptoss-defaults": (
        "GptOssConfig",
        "GptOssForCausalLM",
        dict(
            hidden_size=32,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            num_local_experts=3,
            num_experts_per_tok=2,
            sliding_window=4,
        ),
    ),
    # Qwen3.5: hybrid Gated DeltaNet / gated softmax attention layers (an irregular layer_types),
    # grouped value heads on both kinds, partial rotary, every read key off its default.
    "qwen35-hybrid": (
        "Qwen3_5TextConfig",
        "Qwen3_5ForCausalLM",
        dict(
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=12,
            linear_value_head_dim=16,
            linear_conv_kernel_dim=3,
            layer_types=["linear_attention", "full_attention", "linear_attention"],
            rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5},
            hidden_act="gelu",
            rms_norm_eps=1e-3,
            attention_bias=True,
            tie_word_embeddings=True,
            max_position_embeddings=64,
        ),
    ),
    # Qwen3.5-MoE: routed experts (always renormalized) with the gated shared expert.
    "qwen35moe-hybrid": (
        "Qwen3_5MoeTextConfig",
        "Qwen3_5MoeForCausalLM",
        dict(
            hidden_size=48,
            moe_intermediate_size=24,
            shared_expert_intermediate_size=40,
            num_experts=6,
            num_experts_per_tok=2,
            num_hidden_layers=3,
            layer_types=["full_attention", "linear_attention", "linear_attention"],
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=16,
            linear_num_key_heads=4,
            linear_num_value_heads=4,
            linear_key_head_dim=8,
            linear_value_head_dim=16,
            linear_conv_kernel_dim=2,
            rope_parameters={"rope_type": "default", "rope_theta": 900.0, "partial_rotary_factor": 0.75},
            rms_norm_eps=1e-4,
            hidden_act="gelu_pytorch_tanh",
            attention_bias=True,
            tie_word_embeddings=True,
            max_position_embeddings=64,
        ),
    ),
}

VOCAB = 113


def build_hf_model(name: str, seed: int = 0, vocab_size: int = VOCAB):
    """A seeded random `transformers` model of architecture `name`, in eval mode, float32."""
    import torch
    import transformers

    config_cls, model_cls, kwargs = ARCHITECTURES[name]
    config = getattr(transformers, config_cls)(
        vocab_size=vocab_size,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.15,
        attn_implementation="eager",
        experts_implementation="eager",
        **kwargs,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    return perturbed(model, seed)


def perturbed(model, seed: int):
    """`model` with its norm weights and biases moved away from identity / zero (seeded), so that
    parity tests exercise them."""
    import torch

    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for pname, param in model.named_parameters():
            if "norm" in pname or "ln" in pname or pname.endswith("bias"):
                param.add_(0.2 * torch.randn(param.shape, generator=generator))
    return model


def save_hf_model(model, directory: Path, **kwargs) -> Path:
    model.save_pretrained(directory, **kwargs)
    return Path(directory)


def padded_batch(vocab: int, batch: int = 3, seq: int = 12, seed: int = 0):
    """Token ids and a right-padding mask with rows of different lengths."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, vocab, size=(batch, seq)).astype(np.int32)
    lengths = np.linspace(seq, max(2, seq // 2), batch).astype(int)
    mask = np.arange(seq)[None, :] < lengths[:, None]
    tokens = np.where(mask, tokens, 0).astype(np.int32)
    return tokens, mask


def hf_forward(model, tokens, mask):
    """Logits and hidden states of the Hugging Face model, as numpy."""
    import torch

    with torch.no_grad():
        out = model(
            input_ids=torch.as_tensor(tokens, dtype=torch.long),
            attention_mask=torch.as_tensor(mask, dtype=torch.long),
            output_hidden_states=True,
        )
    return out.logits.numpy(), [h.numpy() for h in out.hidden_states]


# Gemma3ForConditionalGeneration: the text model of "gemma3-sliding" (local and global layers,
# window shorter than the test sequences) and a one-layer vision tower, so it builds fast.
GEMMA3_MULTIMODAL_TEXT = ARCHITECTURES["gemma3-sliding"][2]
GEMMA3_TINY_VISION = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
)


def gemma3_multimodal_config(vocab_size: int = VOCAB, tie_word_embeddings: bool = True, **text_options):
    """A tiny `transformers.Gemma3Config` (multimodal) whose text config is "gemma3-sliding"'s."""
    import transformers

    text = dict(
        GEMMA3_MULTIMODAL_TEXT,
        vocab_size=vocab_size,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        initializer_range=0.15,
        **text_options,
    )
    return transformers.Gemma3Config(
        text_config=text,
        vision_config=GEMMA3_TINY_VISION,
        mm_tokens_per_image=4,
        boi_token_index=vocab_size - 3,
        eoi_token_index=vocab_size - 2,
        image_token_index=vocab_size - 1,
        tie_word_embeddings=tie_word_embeddings,
        initializer_range=0.15,
        attn_implementation="eager",
    )


def build_hf_gemma3_multimodal(seed: int = 0, tie_word_embeddings: bool = True):
    """A seeded random `Gemma3ForConditionalGeneration`, in eval mode, float32, perturbed as
    `build_hf_model` does (norms and biases away from identity)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = gemma3_multimodal_config(tie_word_embeddings=tie_word_embeddings)
    model = transformers.Gemma3ForConditionalGeneration(config).eval()
    return perturbed(model, seed)
