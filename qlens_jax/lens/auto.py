"""The rules behind the "auto" choices of the lens kernel, in one place for every caller.

- `path`: the dense operators (two sweeps of `d_model` basis vectors, then any number of
  features) or the per-feature transport (one linearized pass per feature).
- `sweep_order`: block-major (`blockwise`) or basis-major dense sweeps.
"""

from __future__ import annotations

from qlens_jax.lens import blockwise
from qlens_jax.lens.validation import LensRequestError
from qlens_jax.models.config import ModelConfig

PATHS = ("auto", "dense", "per-feature")
SWEEP_ORDERS = ("auto", "blockwise", "basis")


def path(requested: str, n_features: int, d_model: int, have_operators: bool = False) -> str:
    """ "dense" or "per-feature" for a `requested` path: "auto" takes the dense path when
    operators are given or when there are at least `d_model` features (the sweeps then cost
    no more than one pass per feature)."""
    if requested not in PATHS:
        raise LensRequestError(f"path {requested!r} is not one of {', '.join(PATHS)}")
    if requested != "auto":
        return requested
    return "dense" if (have_operators or n_features >= d_model) else "per-feature"


def sweep_order(requested: str, config: ModelConfig, basis_per_device: int, sequences_fitting: int) -> str:
    """ "blockwise" or "basis" for a `requested` sweep order: "auto" takes the block-major
    sweeps when at least one sequence's tangents fit the memory budget (`sequences_fitting`,
    from `blockwise.sequences_that_fit`) and explicit MLP Jacobians pay (`blockwise.worth_it`)."""
    if requested not in SWEEP_ORDERS:
        raise LensRequestError(f"unknown sweep_order {requested!r}; choose from {SWEEP_ORDERS}")
    if requested != "auto":
        return requested
    return "blockwise" if sequences_fitting >= 1 and blockwise.worth_it(config, basis_per_device) else "basis"
