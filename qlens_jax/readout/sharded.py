"""Top-k of a readout chunk on one device or many: where the chunk's rows and scores lie
(`Layout`), and the per-device ranking under `shard_map` when they are split over a mesh."""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jaxtyping import Array, Float

from qlens_jax import sharding
from qlens_jax.readout.topk import TopK, top_and_bottom, top_k


def _split_topk(scores: Float[Array, "n vocab"], k: int, vocab_size: int, mesh: Mesh, row_axis: str) -> TopK:
    """`top_and_bottom` of scores whose vocabulary axis is split over the mesh's `vocab` axes
    (rows over `row_axis`): each device keeps the best `k` of its slice (padding columns past
    `vocab_size` excluded), the candidates are all-gathered and a final top-k picks among them.
    Candidates arrive in vocabulary order and `top_k` keeps equal values in order, so ties
    resolve to the lower token id exactly as one `top_k` over the whole vocabulary does."""
    vocab = sharding.mesh_axes("vocab")

    def local(block):
        width = block.shape[-1]
        offset = jax.lax.axis_index(vocab) * width
        valid = offset + jnp.arange(width) < vocab_size

        def best(negate: bool):
            values, ids = top_k(jnp.where(valid, block, jnp.inf if negate else -jnp.inf), min(k, width), negate)
            values = jax.lax.all_gather(values, vocab, axis=1, tiled=True)
            ids = jax.lax.all_gather(ids + offset, vocab, axis=1, tiled=True)
            values, pick = jax.lax.top_k(values, k)
            return values, jnp.take_along_axis(ids, pick, axis=1)

        (top, top_ids), (neg, bottom_ids) = best(False), best(True)
        return TopK(top_ids, top, bottom_ids, -neg)

    rows = sharding.spec(row_axis, None)
    # check_vma=False: the merged lists are the same on every `vocab` device (all-gathered
    # candidates), which the replication check does not infer through `top_k`.
    split = jax.shard_map(
        local, mesh=mesh, in_specs=sharding.spec(row_axis, "vocab"), out_specs=TopK._make([rows] * 4), check_vma=False
    )
    return split(scores)


def _rowwise_topk(scores: Float[Array, "n vocab"], k: int, vocab_size: int, mesh: Mesh, row_axis: str) -> TopK:
    """`top_and_bottom` of each device's own rows. Left to XLA's partitioner, the scores would
    be all-gathered before its TopK: every device would hold and rank every row of the chunk."""
    rows = sharding.spec(row_axis, None)
    local = lambda block: top_and_bottom(block[:, :vocab_size], k)
    return jax.shard_map(local, mesh=mesh, in_specs=rows, out_specs=TopK._make([rows] * 4))(scores)


@dataclass(frozen=True)
class Layout:
    """Where a readout chunk lies (static under `jit`). On one device (`mesh` None); feature
    rows over every device, each scoring the whole vocabulary (replicated weights); or, when the
    weights' vocabulary is split over the mesh (`split_vocab`, `sharding.shard_weights`),
    rows over the remaining axes, each device scoring its vocabulary slice."""

    vocab_size: int
    mesh: Mesh | None = None
    split_vocab: bool = False

    @property
    def row_axis(self) -> str:
        """The logical axis the chunk's feature rows are split over."""
        return "vocab_features" if self.split_vocab else "features"

    def _constrain(self, x: Array, *logical: str | None) -> Array:
        return x if self.mesh is None else jax.lax.with_sharding_constraint(x, sharding.named(self.mesh, *logical))

    def rows(self, x: Array) -> Array:
        """`x` with its leading (feature row) axis kept split over the mesh, the rest whole."""
        return self._constrain(x, self.row_axis, *[None] * (x.ndim - 1))

    def scores(self, x: Float[Array, "n vocab"]) -> Float[Array, "n vocab"]:
        """Scores with rows split over the mesh, and the vocabulary too when it is split."""
        return self._constrain(x, self.row_axis, "vocab" if self.split_vocab else None)

    def topk(self, scores: Float[Array, "n vocab"], k: int) -> TopK:
        """Top and bottom `k` over the real vocabulary (sharded weights pad it to a multiple of the mesh)."""
        if self.split_vocab:
            assert self.mesh is not None  # `sharding.shard_weights` splits the vocabulary over a mesh
            return _split_topk(scores, k, self.vocab_size, self.mesh, self.row_axis)
        if self.mesh is not None:
            return _rowwise_topk(scores, k, self.vocab_size, self.mesh, self.row_axis)
        return top_and_bottom(scores[:, : self.vocab_size], k)
