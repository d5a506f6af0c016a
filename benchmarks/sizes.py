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
LLAMA_1B = dict(family="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5,
                max_position_embeddings=8192, tie_word_embeddings=True)
GEMMA3_1B = dict(family="gemma3", hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=256, vocab_size=262144, query_pre_attn_scalar=256, sliding_window=512,
                 rope_theta=1000000.0, rope_local_base_freq=10000.0, rms_norm_eps=1e-6, max_position_embeddings=32768,
                 tie_word_embeddings=True)
# The same families at test size (a window shorter than the tiny sample, so it matters).
LLAMA_TINY = dict(LLAMA_1B, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=512)
GEMMA3_TINY = dict(GEMMA3_1B, hidden_size=64, intermediate_size=128, num_hidden_layers=7, num_attention_heads=4,
                   num_key_value_heads=1, head_dim=16, vocab_size=512, query_pre_attn_scalar=16, sliding_window=8)




# The throughput benchmark's sizes (`benchmarks.throughput --size`).
THROUGHPUT = {
    "gpt2-small": dict(hf=GPT2_SMALL, features=32768, layers=(0, 6, 11), batch=8, seq=256, ref_features=2, budget=16.0),
    "tiny": dict(hf=GPT2_TINY, features=2048, layers=(0, 2, 3), batch=2, seq=32, ref_features=3, budget=8.0),
    # Modern shapes, random weights: one middle layer, 256 tokens (issue 17).
    "llama-1b": dict(hf=LLAMA_1B, features=16384, layers=(8,), batch=1, seq=256, ref_features=2, budget=8.0),
    "gemma3-1b": dict(hf=GEMMA3_1B, features=16384, layers=(13,), batch=1, seq=256, ref_features=2, budget=8.0),
    "llama-tiny": dict(hf=LLAMA_TINY, features=512, layers=(1,), batch=2, seq=16, ref_features=2, budget=4.0),
    "gemma3-tiny": dict(hf=GEMMA3_TINY, features=512, layers=(3,), batch=2, seq=16, ref_features=2, budget=4.0),
}
