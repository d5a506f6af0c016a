"""Readouts: feature vectors -> vocabulary scores -> top-k and bottom-k tokens, chunk by chunk.

- `scores`: the value readout `LN_final(m) W_U + b`, the centered embedding key readout and
  the logit lens (pure functions of weights and vectors);
- `topk`: the exact two-stage top-k (`top_k`, `top_and_bottom`, `TopK`);
- `sharded`: where a chunk lies (`Layout`) and its top-k on one device or many;
- `programs`: the jitted per-chunk programs (scores and top-k on device);
- `streaming`: feature chunks (`FeatureRows`), results fetched to the host as chunks finish;
- `context`: `ReadoutContext` (the lenses' readouts) and `read_topk` (any score function);
- `finite`: a NaN or infinite score stops the run, naming the feature (`check_finite_scores`).
"""

from qlens_jax.readout.context import ReadoutContext, read_topk
from qlens_jax.readout.finite import check_finite_scores
from qlens_jax.readout.scores import (
    centered_embeddings,
    dot_scores,
    identity_scores,
    key_score_fn,
    unembedding_score_fn,
    unembedding_scores,
    value_score_fn,
    value_scores,
)
from qlens_jax.readout.sharded import Layout
from qlens_jax.readout.streaming import FeatureRows, feature_chunk_for
from qlens_jax.readout.topk import TopK, top_and_bottom, top_k

__all__ = [
    "FeatureRows",
    "Layout",
    "ReadoutContext",
    "TopK",
    "centered_embeddings",
    "check_finite_scores",
    "dot_scores",
    "feature_chunk_for",
    "identity_scores",
    "key_score_fn",
    "read_topk",
    "top_and_bottom",
    "top_k",
    "unembedding_score_fn",
    "unembedding_scores",
    "value_score_fn",
    "value_scores",
]
