"""The Subspace Channel analysis end to end (docs/definitions.md section 6; the paper's section 5).

`channel_data` samples the queries of every source dictionary and computes their responses at
every destination block from the first-order operators; `fit_channels` fits one rank-`r` map
per (source, destination) pair, in closed form (always), by the paper's Adam training (with
`train=True`) and, as a control, in closed form on responses shuffled against their queries;
for each family of maps, and for the top-`r` principal subspaces of the responses themselves (no
map), it computes the overlap matrix, the same- versus different-destination permutation test
and the destination-distance test. `subspace_channels` does both.

Seeds: one `seed` decides everything, through independent streams per purpose (feature
sampling, train/validation split, training initialization, shuffled control, permutations).

A caveat the report repeats: `y = R_t v` exactly, so every map fitted to destination `t`
approximates the same linear operator `R_t` (restricted to its source's query distribution),
and the column space of the fit is close to the top response directions of `R_t`. High
overlap within a destination therefore partly follows from the construction; the shuffled
control (maps fitted to responses paired with the wrong queries, same response distribution)
and the response subspaces show how much of it the response distribution alone gives. With
at least as many training features as dimensions (queries of full column rank), the
closed-form map's column space *is* the responses' top-`r` principal subspace.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qlens_jax.channels.fit import LowRankMap, fit_metrics, reduced_rank_regression, split_indices
from qlens_jax.channels.overlap import column_basis, overlap, overlap_matrix
from qlens_jax.channels.responses import (
    ChannelPair,
    Source,
    channel_pairs,
    check_sources,
    make_sources,
    module_responses,
)
from qlens_jax.channels.stats import DistanceTest, GroupTest, destination_test, distance_test
from qlens_jax.channels.training import train_low_rank
from qlens_jax.errors import InputError
from qlens_jax.numerics import applies_precision

# Families of subspaces: the fitted maps' column spaces (closed form, trained, shuffled control)
# and, as a baseline without any map, the top-r principal subspace of each pair's responses.
METHODS = ("closed_form", "trained", "shuffled_control", "response_subspace")
_STREAMS = {"features": 0, "split": 1, "train": 2, "control": 3, "permutation": 4}


def stream(seed: int, purpose: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), _STREAMS[purpose]])


@dataclass(frozen=True)
class ChannelConfig:
    rank: int | None = None  # default d_model // n_layers (the paper's 64 for GPT-2 small)
    n_features: int = 1000  # per source dictionary
    seed: int = 0
    validation_fraction: float = 0.1
    train: bool = False  # also run the paper's Adam training
    epochs: int = 1000
    learning_rate: float = 1e-3
    init_scale: float = 0.01
    n_permutations: int = 10_000
    control: bool = True  # maps fitted to shuffled responses


@dataclass
class ChannelData:
    """Queries and responses: `responses[p]` `[n, d]` belongs to `pairs[p]`, rows aligned with
    `sources[pairs[p].source].queries`."""

    sources: list[Source]
    pairs: list[ChannelPair]
    responses: list[np.ndarray]
    d_model: int
    n_layers: int
    n_tokens: int


@dataclass
class FittedMaps:
    """One family of maps (one per pair), their fit metrics, overlaps and tests."""

    method: str
    maps: list[LowRankMap]
    metrics: list[dict]  # per pair: train_<metric>, val_<metric>
    overlap: np.ndarray  # [maps, maps]
    destination: GroupTest
    distance: DistanceTest
    response_overlap: np.ndarray | None = None  # [maps]: OL with the top-r subspace of its training responses
    best_epochs: list[int] | None = None
    histories: list[tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)

    def mean_metrics(self) -> dict[str, float]:
        return {k: float(np.mean([m[k] for m in self.metrics])) for k in self.metrics[0]} if self.metrics else {}


@dataclass
class ChannelResults:
    data: ChannelData
    config: ChannelConfig
    rank: int
    splits: list[tuple[np.ndarray, np.ndarray]]  # per source: (train rows, validation rows)
    fits: dict[str, FittedMaps]


@applies_precision
def channel_data(
    model,
    dictionaries,
    tokens,
    mask=None,
    *,
    n_features: int = 1000,
    seed: int = 0,
    operators=None,
    precision: str = "float32",
    quiet: bool = True,
) -> ChannelData:
    """Sample queries per dictionary and compute their responses at every destination block
    (`precision`: how the sweep's and the responses' products multiply, `qlens_jax.numerics`).

    `operators`: `TransportOperators` with `first_order` of this model and sample (computed
    here when not given: one first-order sweep, `d_model` tangents through every module).
    A `z` dictionary is refused (`InputError`) before the sweep (`responses.check_sources`).
    """
    from qlens_jax.lens import transport_operators

    check_sources(dictionaries)
    if model.config.parallel_residual:
        # A block's response is defined for sequential blocks (attention, then the MLP at its
        # own input); a parallel block's modules both read resid_pre and are not split so yet.
        raise InputError(
            f"qlens channels: the blocks of this {model.config.model_type} model are parallel (attention and "
            "MLP both read resid_pre); subspace channels are defined for sequential blocks only"
        )
    if mask is None:
        mask = np.ones(np.shape(tokens), bool)
    if operators is None or operators.first_order is None:
        operators = transport_operators(model, tokens, mask, sweeps=("first_order",), quiet=quiet)
    n_layers, d = model.config.n_layers, model.config.d_model
    sources = make_sources(dictionaries, n_layers, n_features, int(stream(seed, "features").integers(2**31)))
    pairs = channel_pairs(sources, n_layers)
    responses: list[np.ndarray] = []
    for index, source in enumerate(sources):
        blocks = [p.destination for p in pairs if p.source == index]
        if blocks:
            ys = np.asarray(module_responses(operators.first_order, source.queries, blocks), np.float64)
            responses.extend(ys)
    return ChannelData(sources, pairs, responses, d, n_layers, int(operators.n_tokens))


def top_response_subspace(Y: np.ndarray, rank: int) -> np.ndarray:
    """Orthonormal basis `[d, r]` of the top-`r` right singular subspace of the responses (their
    uncentered principal subspace). When the queries have full column rank the closed-form map's
    column space is exactly this subspace, since the responses are noise-free linear images."""
    _, s, vt = np.linalg.svd(np.asarray(Y, np.float64), full_matrices=False)
    keep = min(rank, int(np.sum(s > 1e-6 * s[0]))) if s.size and s[0] > 0 else 0
    return vt[:keep].T


def _metrics(fitted: LowRankMap, X, Y, train, val, Y_train=None) -> dict:
    train_target = Y[train] if Y_train is None else Y_train
    out = {f"train_{k}": v for k, v in fit_metrics(fitted.predict(X[train]), train_target).items()}
    out.update({f"val_{k}": v for k, v in fit_metrics(fitted.predict(X[val]), Y[val]).items()})
    return out


def _family(
    method, maps, metrics, data: ChannelData, config: ChannelConfig, response_bases, bases=None, **extra
) -> FittedMaps:
    bases = [column_basis(m.B, m.A) for m in maps] if bases is None else bases
    ol = overlap_matrix(bases)
    destinations = [p.destination for p in data.pairs]
    seed = int(stream(config.seed, "permutation").integers(2**31))
    return FittedMaps(
        method,
        maps,
        metrics,
        ol,
        destination_test(ol, destinations, config.n_permutations, seed),
        distance_test(ol, [p.source for p in data.pairs], destinations, config.n_permutations, seed + 1),
        response_overlap=np.asarray([overlap(b, q) for b, q in zip(bases, response_bases)]),
        **extra,
    )


@applies_precision
def fit_channels(
    data: ChannelData, config: ChannelConfig = ChannelConfig(), *, precision: str = "float32", quiet: bool = True
) -> ChannelResults:
    """Fit every pair's map (closed form; trained and shuffled control as configured), then overlaps and tests."""
    from qlens_jax.progress import progress

    rank = config.rank or max(1, data.d_model // data.n_layers)
    split_rng = stream(config.seed, "split")
    splits = [split_indices(len(s.feature_ids), split_rng, config.validation_fraction) for s in data.sources]
    control_rng = stream(config.seed, "control")
    train_seeds = stream(config.seed, "train").integers(2**31, size=len(data.pairs))
    closed, trained, control = ([], []), ([], [], [], []), ([], [])
    response_bases = []
    for p, (pair, Y) in enumerate(
        progress(list(zip(data.pairs, data.responses)), desc="channel maps", quiet=quiet, unit="pair")
    ):
        X = np.asarray(data.sources[pair.source].queries, np.float64)
        train, val = splits[pair.source]
        response_bases.append(top_response_subspace(Y[train], rank))
        fitted = reduced_rank_regression(X[train], Y[train], rank)
        closed[0].append(fitted)
        closed[1].append(_metrics(fitted, X, Y, train, val))
        if config.train:
            result = train_low_rank(
                X[train],
                Y[train],
                X[val],
                Y[val],
                rank,
                epochs=config.epochs,
                learning_rate=config.learning_rate,
                init_scale=config.init_scale,
                seed=int(train_seeds[p]),
            )
            trained[0].append(result.map)
            trained[1].append(_metrics(result.map, X, Y, train, val))
            trained[2].append(result.best_epoch)
            trained[3].append((result.train_loss, result.val_loss))
        if config.control:
            shuffled = Y[train][control_rng.permutation(len(train))]
            fitted = reduced_rank_regression(X[train], shuffled, rank)
            control[0].append(fitted)
            control[1].append(_metrics(fitted, X, Y, train, val, Y_train=shuffled))
    fits = {"closed_form": _family("closed_form", *closed, data, config, response_bases)}
    if config.train:
        fits["trained"] = _family(
            "trained",
            trained[0],
            trained[1],
            data,
            config,
            response_bases,
            best_epochs=trained[2],
            histories=trained[3],
        )
    if config.control:
        fits["shuffled_control"] = _family("shuffled_control", *control, data, config, response_bases)
    fits["response_subspace"] = _family("response_subspace", [], [], data, config, response_bases, bases=response_bases)
    return ChannelResults(data, config, rank, splits, fits)


@applies_precision
def subspace_channels(
    model,
    dictionaries,
    tokens,
    mask=None,
    config: ChannelConfig = ChannelConfig(),
    *,
    operators=None,
    precision: str = "float32",
    quiet: bool = True,
) -> ChannelResults:
    """The whole analysis: responses from the first-order operators, maps, overlaps, tests
    (`precision`: how every product multiplies, `qlens_jax.numerics`)."""
    data = channel_data(
        model,
        dictionaries,
        tokens,
        mask,
        n_features=config.n_features,
        seed=config.seed,
        operators=operators,
        quiet=quiet,
    )
    return fit_channels(data, config, quiet=quiet)
