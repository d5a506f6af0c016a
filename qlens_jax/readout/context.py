"""The readouts of each lens applied to (transported) feature vectors: `ReadoutContext` for the
lenses, `read_topk` for any score function (the baselines')."""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Float

from qlens_jax import sharding
from qlens_jax.models import Transformer
from qlens_jax.numerics import applies_precision
from qlens_jax.readout.programs import ScoreFn, first_order_chunks, readout_chunks
from qlens_jax.readout.scores import key_score_fn, value_score_fn
from qlens_jax.readout.sharded import Layout
from qlens_jax.readout.streaming import FeatureRows, host_rows, run_chunks
from qlens_jax.readout.topk import TopK

Vectors = Float[Array, "n w"] | Float[np.ndarray, "n w"] | FeatureRows


def read_topk(score_fn: ScoreFn, vectors: Vectors, k: int, feature_chunk: int, layout: Layout) -> dict[str, np.ndarray]:
    """Top/bottom-k ids and scores (`TopK`'s fields, `[n, k]` host arrays) of `score_fn(vectors)`,
    `feature_chunk` rows (per device) at a time. `vectors`: `[n, d]` on host or device, or
    `FeatureRows` read from the dictionary chunk by chunk."""
    fn = lambda chunk: readout_chunks(score_fn, chunk, k, layout)
    return dict(zip(TopK._fields, run_chunks(fn, host_rows(vectors), feature_chunk, layout)))


@dataclass
class ReadoutContext:
    """What readouts need: the model (value side), the centered embedding matrix (key side).

    With a `mesh`, feature rows are split over it; if the model's weights are sharded
    (`sharding.shard_weights`), the vocabulary is split too (`Layout`): `key_matrix` should
    then be split like `W_E` (`sharding.named(mesh, "vocab", None)`)."""

    model: Transformer
    key_matrix: Float[Array, "vocab d"]
    remove_final_norm_bias: bool
    k: int
    feature_chunk: int
    mesh: Mesh | None = None

    @property
    def layout(self) -> Layout:
        """Where the readout's chunks lie: on one device, rows over the mesh, or the vocabulary too."""
        split = self.mesh is not None and sharding.vocab_sharded(self.model)
        return Layout(self.model.config.vocab_size, self.mesh, split)

    def score_fn(self, side: str, op: Float[Array, "d w"] | None = None, logit_lens: bool = False) -> eqx.Partial:
        """The side's readout of `vectors @ op.T` (or `vectors`): the value readout, the centered
        key readout, or the logit lens's `W_E` key readout."""
        if side == "value":
            return value_score_fn(self.model, self.remove_final_norm_bias, op)
        return key_score_fn(self.model.W_E if logit_lens else self.key_matrix, op)

    @applies_precision
    def read(
        self,
        side: str,
        vectors: Vectors,
        op: Float[Array, "d w"] | None = None,
        logit_lens: bool = False,
        precision: str = "float32",
    ) -> dict:
        """Top/bottom-k of `vectors @ op.T` (or `vectors`) under the side's readout (`precision`:
        `qlens_jax.numerics`; inside another entry point, that one's mode)."""
        return read_topk(self.score_fn(side, op, logit_lens), vectors, self.k, self.feature_chunk, self.layout)

    @applies_precision
    def read_first_order(
        self,
        side: str,
        vectors: Vectors | Float[Array, "n T d"] | Float[np.ndarray, "n T d"],
        terms_op: Float[Array, "T d w"] | None,
        precision: str = "float32",
    ) -> dict:
        """Total and per-term signatures and energies; `vectors` are raw `[n, d]` with
        `terms_op [T, d, d]`, or already transported terms `[n, T, d]` with `terms_op=None`."""
        # without `terms_op`, `vectors` are the transported terms, an array
        terms = terms_op.shape[0] if terms_op is not None else vectors.shape[1]  # pyright: ignore[reportAttributeAccessIssue]
        size = max(1, self.feature_chunk // (1 + terms))
        score_fn = self.score_fn(side)
        layout = self.layout
        fn = lambda chunk: first_order_chunks(score_fn, terms_op, chunk, self.k, layout)
        total, per_term, energy = run_chunks(fn, host_rows(vectors), size, layout)
        result = dict(zip(TopK._fields, total))
        result.update({"layer_" + field: value for field, value in zip(TopK._fields, per_term)})
        return result | {"layer_energy": energy}
