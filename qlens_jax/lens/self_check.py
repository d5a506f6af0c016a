"""The self-check: a few features of the dense path recomputed on the per-feature path.

The dense operators and the per-feature transport are two implementations of the same
definitions (docs/definitions.md section 2); if they disagree beyond the dtype's tolerance the numbers
cannot be trusted and `SelfCheckError` stops the request.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from qlens_jax import sharding
from qlens_jax.errors import SelfCheckError
from qlens_jax.lens.first_order import first_order_terms_per_feature
from qlens_jax.lens.means import per_feature_means

SELF_CHECK_RTOL = {"float32": 1e-4, "bfloat16": 5e-2}


def self_check_indices(n: int, count: int) -> np.ndarray:
    """`count` feature positions spread evenly over `n` (all of them when `n <= count`)."""
    return np.unique(np.linspace(0, n - 1, min(n, count)).astype(int))


def compare(dense, reference, rtol: float, what: str) -> None:
    """Raise `SelfCheckError` when a row of `dense` differs from `reference` by more than
    `rtol` relative to the reference row's norm."""
    dense, reference = sharding.to_host(dense), sharding.to_host(reference)
    scale = np.linalg.norm(reference, axis=-1)
    err = np.linalg.norm(dense - reference, axis=-1) / np.maximum(scale, 1e-30)
    worst = float(err.max())
    if worst > rtol:
        raise SelfCheckError(
            f"self-check failed for {what}: dense operators and per-feature transport differ by "
            f"{worst:.2e} (relative, tolerance {rtol:.0e}). The numbers cannot be trusted; please "
            "report this with your jax/jaxlib versions and device."
        )


def tolerance(dtype: str, precision: str) -> float:
    """The self-check's relative tolerance: the looser of the storage dtype's and the matmul
    precision's."""
    return max(SELF_CHECK_RTOL[dtype], SELF_CHECK_RTOL["float32" if precision == "float32" else "bfloat16"])


def check_query_lens(plan, request, side: str, vectors, point, op, lens: str) -> None:
    """Dense `vectors @ op^T` against per-feature means for a few of `vectors`."""
    pick = self_check_indices(len(vectors), plan.execution.self_check_features)
    sample = np.asarray(vectors[pick], np.float32)
    mean, _ = per_feature_means(plan, side, sample, point, quiet=True)
    compare(
        sample @ op.T,
        mean,
        tolerance(plan.options.dtype, plan.options.precision),
        f"{lens} of {request.dictionary.name} (layer {request.dictionary.layer})",
    )


def check_first_order(plan, request, side: str, vectors, terms, lens: str) -> None:
    """Dense first-order terms against per-feature ones for a few of `vectors`."""
    pick = self_check_indices(len(vectors), plan.execution.self_check_features)
    sample = np.asarray(vectors[pick], np.float32)
    n_layers = plan.model.config.n_layers
    _, reference = first_order_terms_per_feature(
        plan.transport_model(side),
        plan.tokens,
        plan.mask,
        plan.chunks,
        side,
        sample,
        request.points,
        n_layers,
        plan.options.first_order_key_mask_seed,
    )
    dense = jnp.einsum("nd,tid->nti", sample, terms)
    compare(
        dense.sum(1),
        reference.sum(1),
        tolerance(plan.options.dtype, plan.options.precision),
        f"{lens} of {request.dictionary.name} (layer {request.dictionary.layer})",
    )
