"""The rules behind the "auto" choices of the lens kernel, in one place for every caller.

- `path`: the dense operators (two sweeps of `d_model` basis vectors, then any number of
  features) or the per-feature transport (one linearized pass per feature), whichever passes
  fewer tangents through fewer modules (`transport_passes`).
- `sweep_order`: block-major (`blockwise`) or basis-major dense sweeps.
"""

from __future__ import annotations

from collections.abc import Sequence

from qlens_jax.lens import blockwise, partial_transport
from qlens_jax.lens.points import DictionaryPoints
from qlens_jax.lens.validation import LensRequestError
from qlens_jax.models.config import ModelConfig

PATHS = ("auto", "dense", "per-feature")
SWEEP_ORDERS = ("auto", "blockwise", "basis")


def path(requested: str, per_feature_passes: int, dense_passes: int, have_operators: bool = False) -> str:
    """ "dense" or "per-feature" for a `requested` path: "auto" takes the dense path when
    operators are given or when its sweeps cost no more than the per-feature passes (both in
    tangent-module passes, `transport_passes`), unless the per-feature path needs none at all.
    One dictionary read at full depth on one side reduces this to: dense from `d_model` features."""
    if requested not in PATHS:
        raise LensRequestError(f"path {requested!r} is not one of {', '.join(PATHS)}")
    if requested != "auto":
        return requested
    dense = have_operators or (per_feature_passes > 0 and per_feature_passes >= dense_passes)
    return "dense" if dense else "per-feature"


def transport_passes(
    requests: Sequence[tuple[int, DictionaryPoints]],
    sides: Sequence[tuple[str, bool]],
    config: ModelConfig,
) -> tuple[int, int]:
    """(per-feature, dense) cost of the transports, in tangents x residual modules passed.

    `requests`: (feature count, points) per dictionary; `sides`: ("value" | "key", first
    order?) per transport lens. The per-feature path pushes each feature through the modules
    downstream of its write point (value) or upstream of its read point (key), the whole
    model where `partial_transport` does not shorten it and for first-order lenses; the dense
    path sweeps `d_model` basis vectors once per side over the modules the farthest dictionary
    needs (the first-order sweep over all of them).
    """
    n_layers, every = config.n_layers, 2 * config.n_layers
    per_feature, dense = 0, 0
    for side, first_order in sorted(set(sides)):
        depths = []
        for n_features, points in requests:
            point = points.write if side == "value" else points.read
            shortened = partial_transport.covers(point, side, n_layers, config.parallel_residual)
            reach = len(points.value_modules(n_layers) if side == "value" else points.key_modules(n_layers))
            depths.append(reach)
            per_feature += n_features * (reach if shortened and not first_order else every)
        dense += config.d_model * (every if first_order else max(depths, default=0))
    return per_feature, dense


def sweep_order(requested: str, config: ModelConfig, basis_per_device: int, sequences_fitting: int) -> str:
    """ "blockwise" or "basis" for a `requested` sweep order: "auto" takes the block-major
    sweeps when at least one sequence's tangents fit the memory budget (`sequences_fitting`,
    from `blockwise.sequences_that_fit`) and explicit MLP Jacobians pay (`blockwise.worth_it`)."""
    if requested not in SWEEP_ORDERS:
        raise LensRequestError(f"unknown sweep_order {requested!r}; choose from {SWEEP_ORDERS}")
    if requested != "auto":
        return requested
    return "blockwise" if sequences_fitting >= 1 and blockwise.worth_it(config, basis_per_device) else "basis"
