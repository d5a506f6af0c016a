"""Token and tangent chunk sizes from a memory budget.

Linearizing a chunk of `t` tokens keeps roughly `t x bytes_per_token` of residuals alive;
mapping the linear map over `c` tangents at once needs about `c x t x d_model x points`
more. Both sizes come from the memory of the device the job runs on (`qlens_jax.memory`,
overridable); on CPU the tangents go one at a time (a sequential `lax.map` beats `vmap` there,
docs/definitions.md section 2), on GPUs and TPUs in chunks sized to the device's memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from jaxtyping import Bool, Int

from qlens_jax import memory
from qlens_jax.models import Transformer, mixer_floats


@dataclass(frozen=True)
class ChunkPlan:
    sequences_per_chunk: int
    tangent_chunk: int


def bytes_per_token(model: Transformer, seq_len: int) -> int:
    """Rough size of the linearization residuals per token (all layers)."""
    c = model.config
    itemsize = np.dtype(model.embed_tokens.dtype).itemsize
    per_layer = 16 * c.d_model + 3 * c.d_mlp + mixer_floats(c, seq_len)
    return c.n_layers * per_layer * max(itemsize, 4)


def plan_chunks(
    model: Transformer,
    shape: tuple[int, int],
    memory_budget_gb: float | None = None,
    sequences_per_chunk: int | None = None,
    tangent_chunk: int | None = None,
    device=None,
) -> ChunkPlan:
    """Chunk sizes for a `[batch, seq]` sample under the budget (GiB; default: from the memory
    of `device`, itself by default `memory.default_device()`)."""
    batch, seq = shape
    device = device or memory.default_device()
    budget = memory.budget_bytes(memory_budget_gb, device)
    if sequences_per_chunk is None:
        per_sequence = bytes_per_token(model, seq) * seq
        sequences_per_chunk = int(max(1, min(batch, (0.5 * budget) // per_sequence)))
    if tangent_chunk is None:
        c = model.config
        per_tangent = sequences_per_chunk * seq * c.d_model * 4 * (3 * c.n_layers + 1) * 2
        tangent_chunk = memory.tangent_chunk_for(device, 0.4 * budget, per_tangent, c.d_model)
    return ChunkPlan(sequences_per_chunk=sequences_per_chunk, tangent_chunk=tangent_chunk)


def iter_token_chunks(
    tokens: Int[np.ndarray, "batch seq"], mask: Bool[np.ndarray, "batch seq"], size: int
) -> Iterator[tuple[Int[np.ndarray, "size seq"], Bool[np.ndarray, "size seq"]]]:
    """Chunks of `size` sequences, host arrays; the last is padded with fully masked rows (same
    shape, one compilation), which contribute nothing to any masked sum. The sample is read to
    the host once, before the first chunk, never chunk by chunk inside a sweep."""
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    batch = tokens.shape[0]
    for start in range(0, batch, size):
        chunk_tokens, chunk_mask = tokens[start : start + size], mask[start : start + size]
        missing = size - chunk_tokens.shape[0]
        if missing:
            chunk_tokens = np.concatenate([chunk_tokens, np.zeros((missing, tokens.shape[1]), np.int32)])
            chunk_mask = np.concatenate([chunk_mask, np.zeros((missing, tokens.shape[1]), bool)])
        yield chunk_tokens, chunk_mask
