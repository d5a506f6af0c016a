"""The model shapes and benchmark settings, in one place: each benchmark reads its sizes from here.

A model shape is the keyword arguments of a `transformers` config (`builders.hf_config` builds
it; `family` names the config class, GPT-2 when absent). Weights are always random (seeded):
the benchmarks measure speed and memory, and check agreement between implementations on the
same weights.
"""

from __future__ import annotations

GPT2_SMALL: dict = {}  # transformers.GPT2Config() defaults: 12 layers, d_model 768, vocab 50257
GPT2_TINY = dict(n_embd=64, n_layer=4, n_head=4, vocab_size=2048, n_positions=128)


# Random-weight stand-ins in the shapes of modern models (`hf_model` builds them): the
# published configurations of Llama-3.2-1B and Gemma-3-1B (grouped-query attention; Gemma's
# five sliding-window layers to one global), without Llama's long-context RoPE scaling.
LLAMA_1B = dict(
    family="llama",
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
    vocab_size=128256,
    rope_theta=500000.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=8192,
    tie_word_embeddings=True,
)
GEMMA3_1B = dict(
    family="gemma3",
    hidden_size=1152,
    intermediate_size=6912,
    num_hidden_layers=26,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    vocab_size=262144,
    query_pre_attn_scalar=256,
    sliding_window=512,
    rope_theta=1000000.0,
    rope_local_base_freq=10000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
)
# The same families at test size (a window shorter than the tiny sample, so it matters).
LLAMA_TINY = dict(
    LLAMA_1B,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
)
GEMMA3_TINY = dict(
    GEMMA3_1B,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=7,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=16,
    vocab_size=512,
    query_pre_attn_scalar=16,
    sliding_window=8,
)
# The other models of the paper's Table 1 (appendix C, Table 3), as published: Gemma-3-270M and
# Qwen3-1.7B-Base.
GEMMA3_270M = dict(
    GEMMA3_1B,
    hidden_size=640,
    intermediate_size=2048,
    num_hidden_layers=18,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
)
QWEN3_1_7B = dict(
    family="qwen3",
    hidden_size=2048,
    intermediate_size=6144,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    vocab_size=151936,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
)
QWEN3_TINY = dict(
    QWEN3_1_7B,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=512,
)

# The paper's token sample: 1024 windows of 32 tokens (`--paper-sample`).
PAPER_SAMPLE = (1024, 32)

# The throughput benchmark's sizes (`benchmarks.throughput --size`). `layers`: where the
# contestant is timed and the readouts measured; `job_layers`: the whole-dictionary job's layers
# (None: every layer, the benchmarked ones interpolated between). The paper's four settings
# (`paper=True`) have its dictionary widths and layers; their default samples are smaller than
# the paper's (`--paper-sample` takes it), so that a run fits a session on a 2-core CPU.
THROUGHPUT = {
    "gpt2-small": dict(
        hf=GPT2_SMALL,
        features=32768,
        layers=(0, 6, 11),
        job_layers=None,
        batch=8,
        seq=256,
        ref_features=2,
        budget=16.0,
        paper=True,
    ),
    "gemma3-270m": dict(
        hf=GEMMA3_270M,
        features=65536,
        layers=(5, 9, 12, 15),
        job_layers=(5, 9, 12, 15),
        batch=16,
        seq=32,
        ref_features=2,
        budget=8.0,
        paper=True,
    ),
    "gemma3-1b": dict(
        hf=GEMMA3_1B,
        features=65536,
        layers=(7, 13, 17, 22),
        job_layers=(7, 13, 17, 22),
        batch=8,
        seq=32,
        ref_features=2,
        budget=8.0,
        paper=True,
    ),
    # 6 GiB: the model is held twice while it is converted (12.8 GiB at 1.7B parameters)
    "qwen3-1.7b": dict(
        hf=QWEN3_1_7B,
        features=32768,
        layers=(8, 13, 18, 23),
        job_layers=(8, 13, 18, 23),
        batch=8,
        seq=32,
        ref_features=2,
        budget=6.0,
        paper=True,
    ),
    "tiny": dict(
        hf=GPT2_TINY, features=2048, layers=(0, 2, 3), job_layers=None, batch=2, seq=32, ref_features=3, budget=8.0
    ),
    # Llama-3.2-1B shapes, random weights: one middle layer, 256 tokens (issue 17).
    "llama-1b": dict(
        hf=LLAMA_1B, features=16384, layers=(8,), job_layers=None, batch=1, seq=256, ref_features=2, budget=8.0
    ),
    "llama-tiny": dict(
        hf=LLAMA_TINY, features=512, layers=(1,), job_layers=None, batch=2, seq=16, ref_features=2, budget=4.0
    ),
    "gemma3-tiny": dict(
        hf=GEMMA3_TINY, features=512, layers=(3,), job_layers=None, batch=2, seq=16, ref_features=2, budget=4.0
    ),
    # a paper-like setting at test size: its own job layers, a family of its own
    "qwen3-tiny": dict(
        hf=QWEN3_TINY, features=512, layers=(1, 2), job_layers=(1, 2), batch=2, seq=16, ref_features=2, budget=4.0
    ),
}

# Gemma-2-2B, the model of Gemma Scope and its million-feature SAEs, as published: the fields of
# a qlens-jax `ModelConfig` (`builders.gemma2_model_config` builds it directly, no converter):
# soft-capped attention logits (50) and final logits (30), pre- and post-norms, local (window
# 4096) and global layers alternating, attention scaled by query_pre_attn_scalar^-1/2.
GEMMA2_2B = dict(
    vocab_size=256000,
    d_model=2304,
    n_layers=26,
    n_heads=8,
    n_kv_heads=4,
    head_dim=256,
    d_mlp=9216,
    norm_eps=1e-6,
    max_positions=8192,
    rope_theta=10000.0,
    sliding_window=4096,
    query_pre_attn_scalar=256,
    attn_logit_softcap=50.0,
    final_logit_softcap=30.0,
)

# `benchmarks.million --size`: GPT-2 small (run end to end) and Gemma-2-2B (planned, a slice
# measured: `slice_features` features on the model cut to `slice_layers` blocks; the readout does
# not depend on depth).
MILLION = {
    "gpt2-small": dict(hf=GPT2_SMALL, features=2**20, layer=6, batch=1, seq=256),
    "tiny": dict(hf=GPT2_TINY, features=2**16, layer=2, batch=2, seq=32),
    "gemma2-2b": dict(
        shape=GEMMA2_2B, features=2**20, layer=12, batch=1, seq=256, slice_features=1024, slice_layers=2, budget=6.0
    ),
    "gemma2-tiny": dict(
        shape=dict(
            GEMMA2_2B,
            vocab_size=512,
            d_model=64,
            n_layers=4,
            n_heads=4,
            n_kv_heads=2,
            head_dim=16,
            d_mlp=128,
            sliding_window=4,
            query_pre_attn_scalar=16,
        ),
        features=4096,
        layer=2,
        batch=1,
        seq=16,
        slice_features=1024,
        slice_layers=2,
        budget=1.0,
    ),
}
