"""Subspace channels: low-rank maps between layers and how their subspaces overlap.

The paper's Subspace Channel Hypothesis (section 5, appendix J; docs/definitions.md section 6): for value
vectors `v` of features at a source layer `s`, the first-order response of destination block
`t` is `y = R_t v`; a rank-`r` map `W = B A` fitted from queries to responses for every pair
`(s, t)` defines a subspace (its column space) per pair, and maps that share a destination
should overlap more than maps that do not.

Modules: `responses` (queries, destinations, `Y = V @ R_t.T`), `fit` (closed-form reduced-rank
regression and fit metrics), `training` (the paper's optax training), `overlap` (column-space
overlap), `stats` (permutation tests), `analysis` (end to end), `report` (tables, summary),
`checkpoint` (the maps, Orbax), `plots` (figures) and `cli` (`qlens channels`).
"""

from qlens_jax.channels.analysis import (
    METHODS,
    ChannelConfig,
    ChannelData,
    ChannelResults,
    FittedMaps,
    channel_data,
    fit_channels,
    subspace_channels,
)
from qlens_jax.channels.checkpoint import load_maps, save_maps
from qlens_jax.channels.fit import LowRankMap, fit_metrics, reduced_rank_regression, split_indices
from qlens_jax.channels.overlap import column_basis, overlap, overlap_matrix
from qlens_jax.channels.report import write_outputs
from qlens_jax.channels.responses import ChannelPair, Source, block_operator, destination_blocks, module_responses
from qlens_jax.channels.stats import DistanceTest, GroupTest, auc, destination_test, distance_test, permutation_p
from qlens_jax.channels.training import TrainedMap, train_low_rank

__all__ = [
    "METHODS",
    "ChannelConfig",
    "ChannelData",
    "ChannelPair",
    "ChannelResults",
    "DistanceTest",
    "FittedMaps",
    "GroupTest",
    "LowRankMap",
    "Source",
    "TrainedMap",
    "auc",
    "block_operator",
    "channel_data",
    "column_basis",
    "destination_blocks",
    "destination_test",
    "distance_test",
    "fit_channels",
    "fit_metrics",
    "load_maps",
    "module_responses",
    "overlap",
    "overlap_matrix",
    "permutation_p",
    "reduced_rank_regression",
    "save_maps",
    "split_indices",
    "subspace_channels",
    "train_low_rank",
    "write_outputs",
]
