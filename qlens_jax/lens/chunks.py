"""Token and tangent chunk sizes from a memory budget.

Linearizing a chunk of `t` tokens keeps roughly `t x bytes_per_token` of residuals alive;
mapping the linear map over `c` tangents at once needs about `c x t x d_model x points`
more. Both sizes come from the budget (overridable); on CPU the tangents go one at a time
(a sequential `lax.map` beats `vmap` there, DESIGN.md section 2).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import jax
import numpy as np
from jaxtyping import Bool, Int

from qlens_jax.models import Transformer

DEFAULT_CPU_BUDGET_GB = 8.0


@dataclass(frozen=True)
class ChunkPlan:
    sequences_per_chunk: int
    tangent_chunk: int


def available_memory_gb() -> float:
    """Free memory of the default device (GPU/TPU stats, or MemAvailable on CPU)."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        if limit:
            return (limit - stats.get("bytes_in_use", 0)) / 2**30
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return DEFAULT_CPU_BUDGET_GB


def default_budget_gb() -> float:
    env = os.environ.get("QLENS_MEMORY_BUDGET_GB")
    if env:
        return float(env)
    free = available_memory_gb()
    if jax.devices()[0].platform == "cpu":
        return min(DEFAULT_CPU_BUDGET_GB, 0.5 * free)
    return 0.6 * free


def bytes_per_token(model: Transformer, seq_len: int) -> int:
    """Rough size of the linearization residuals per token (all layers)."""
    c = model.config
    itemsize = np.dtype(model.embed_tokens.dtype).itemsize
    per_layer = 16 * c.d_model + 3 * c.d_mlp + 3 * c.n_heads * seq_len + 4 * c.n_heads * c.head_dim
    return c.n_layers * per_layer * max(itemsize, 4)


def plan_chunks(
    model: Transformer,
    shape: tuple[int, int],
    memory_budget_gb: float | None = None,
    sequences_per_chunk: int | None = None,
    tangent_chunk: int | None = None,
) -> ChunkPlan:
    """Chunk sizes for a `[batch, seq]` sample under the budget (GiB)."""
    batch, seq = shape
    budget = (memory_budget_gb or default_budget_gb()) * 2**30
    if sequences_per_chunk is None:
        per_sequence = bytes_per_token(model, seq) * seq
        sequences_per_chunk = int(max(1, min(batch, (0.5 * budget) // per_sequence)))
    if tangent_chunk is None:
        if jax.devices()[0].platform == "cpu":
            tangent_chunk = 1
        else:
            c = model.config
            per_tangent = sequences_per_chunk * seq * c.d_model * 4 * (3 * c.n_layers + 1) * 2
            tangent_chunk = int(max(1, min(c.d_model, (0.4 * budget) // per_tangent)))
    return ChunkPlan(sequences_per_chunk=sequences_per_chunk, tangent_chunk=tangent_chunk)


def iter_token_chunks(
    tokens: Int[np.ndarray, "batch seq"], mask: Bool[np.ndarray, "batch seq"], size: int
) -> Iterator[tuple[Int[np.ndarray, "size seq"], Bool[np.ndarray, "size seq"]]]:
    """Chunks of `size` sequences; the last is padded with fully masked rows (same shape,
    one compilation), which contribute nothing to any masked sum."""
    batch = tokens.shape[0]
    for start in range(0, batch, size):
        chunk_tokens, chunk_mask = tokens[start : start + size], mask[start : start + size]
        missing = size - chunk_tokens.shape[0]
        if missing:
            chunk_tokens = np.concatenate([np.asarray(chunk_tokens), np.zeros((missing, tokens.shape[1]), np.int32)])
            chunk_mask = np.concatenate([np.asarray(chunk_mask), np.zeros((missing, tokens.shape[1]), bool)])
        yield np.asarray(chunk_tokens), np.asarray(chunk_mask)
