"""Statistics on the overlap matrix: same- versus different-destination groups and distance.

All tests permute map labels, never pair labels, so the dependence between pairs that share a
map is kept under the null. `p = (#{null >= observed} + 1) / (n + 1)` (one-sided), counting a
null value as reaching the observed one within `1e-10` relative (the same number computed in
another order must count).

- `destination_test`: pairs of maps grouped by shared destination block; statistics: the gap of
  group means (within - between) and the AUC `P(OL_within > OL_between)` (ties count one half);
  null: destination labels shuffled over all maps (the group sizes stay fixed).
- `distance_test`: pairs of maps with the same source; Spearman rho of OL against
  `|t_i - t_j|`; null: destination labels shuffled within each source. One-sided towards
  negative rho (overlap falls with distance), and two-sided on `|rho|`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy.stats import rankdata

_CHUNK = 1024  # permutations per vectorized step (memory: chunk x pairs)


def _reaches(null: np.ndarray, observed: float) -> np.ndarray:
    return null >= observed - 1e-10 * max(1.0, abs(observed))


def permutation_p(null: np.ndarray, observed: float) -> float:
    """One-sided `(#{null >= observed} + 1) / (n + 1)`; nan when `observed` is nan."""
    if not np.isfinite(observed):
        return float("nan")
    return float((np.count_nonzero(_reaches(null, observed)) + 1) / (null.size + 1))


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """`P(X > Y) + P(X = Y) / 2` for X from `positive`, Y from `negative` (Mann-Whitney)."""
    positive, negative = np.asarray(positive, float), np.asarray(negative, float)
    if positive.size == 0 or negative.size == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([positive, negative]))
    return float(
        (ranks[: positive.size].sum() - positive.size * (positive.size + 1) / 2) / (positive.size * negative.size)
    )


@dataclass(frozen=True)
class GroupTest:
    n_maps: int
    n_within: int
    n_between: int
    within_mean: float
    within_std: float
    between_mean: float
    between_std: float
    gap: float
    auc: float
    p_gap: float
    p_auc: float
    n_permutations: int
    null_gap: np.ndarray = field(repr=False)
    null_auc: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("null_gap"), d.pop("null_auc")
        return d


def _group_statistics(same: np.ndarray, values: np.ndarray, ranks: np.ndarray):
    """Gap of means and AUC for each row of the boolean `same [P, pairs]` (fixed group sizes)."""
    n_w = same.sum(axis=1)
    n_b = same.shape[1] - n_w
    s = same.astype(np.float64)
    sum_w = s @ values
    with np.errstate(invalid="ignore", divide="ignore"):
        gap = sum_w / n_w - (values.sum() - sum_w) / n_b
        area = (s @ ranks - n_w * (n_w + 1) / 2) / (n_w * n_b)
    return gap, area


def destination_test(ol: np.ndarray, destinations, n_permutations: int = 10_000, seed: int = 0) -> GroupTest:
    """Same- vs different-destination overlap, with the label-shuffling permutation test."""
    labels = np.asarray(destinations)
    m = labels.size
    i, j = np.triu_indices(m, 1)
    values = ol[i, j]
    ranks = rankdata(values)
    same = labels[i] == labels[j]
    gap, area = (x[0] for x in _group_statistics(same[None], values, ranks))
    rng = np.random.default_rng(seed)
    null_gap, null_auc = [], []
    for start in range(0, n_permutations, _CHUNK):
        perm = rng.permuted(np.tile(labels, (min(_CHUNK, n_permutations - start), 1)), axis=1)
        g, a = _group_statistics(perm[:, i] == perm[:, j], values, ranks)
        null_gap.append(g)
        null_auc.append(a)
    null_gap = np.concatenate(null_gap) if null_gap else np.zeros(0)
    null_auc = np.concatenate(null_auc) if null_auc else np.zeros(0)
    within, between = values[same], values[~same]
    std = lambda x: float(np.std(x, ddof=1)) if x.size > 1 else float("nan")
    mean = lambda x: float(np.mean(x)) if x.size else float("nan")
    return GroupTest(
        n_maps=m,
        n_within=int(same.sum()),
        n_between=int((~same).sum()),
        within_mean=mean(within),
        within_std=std(within),
        between_mean=mean(between),
        between_std=std(between),
        gap=float(gap),
        auc=float(area),
        p_gap=permutation_p(null_gap, float(gap)),
        p_auc=permutation_p(null_auc, float(area)),
        n_permutations=int(n_permutations),
        null_gap=null_gap,
        null_auc=null_auc,
    )


def spearman_rows(x: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Spearman rho of the vector `x` with each row of `Y` (midranks; nan for a constant row)."""
    rx = rankdata(x)
    ry = rankdata(Y, axis=1)
    rx = rx - rx.mean()
    ry = ry - ry.mean(axis=1, keepdims=True)
    denom = np.sqrt((rx**2).sum()) * np.sqrt((ry**2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (ry @ rx) / denom, np.nan)


@dataclass(frozen=True)
class DistanceTest:
    n_pairs: int
    rho: float
    p_negative: float  # one-sided: overlap falls with destination distance
    p_two_sided: float
    n_permutations: int
    distances: np.ndarray = field(repr=False)
    overlaps: np.ndarray = field(repr=False)
    pair_sources: np.ndarray = field(repr=False)
    null_rho: np.ndarray = field(repr=False)

    def summary(self) -> dict:
        d = asdict(self)
        for key in ("distances", "overlaps", "pair_sources", "null_rho"):
            d.pop(key)
        return d

    def mean_by_distance(self) -> dict[int, tuple[float, int]]:
        return {
            int(k): (float(self.overlaps[self.distances == k].mean()), int((self.distances == k).sum()))
            for k in np.unique(self.distances)
        }


def distance_test(ol: np.ndarray, sources, destinations, n_permutations: int = 10_000, seed: int = 0) -> DistanceTest:
    """OL against `|t_i - t_j|` over pairs of maps with the same source (see module docstring)."""
    sources, labels = np.asarray(sources), np.asarray(destinations)
    i, j = np.triu_indices(labels.size, 1)
    keep = sources[i] == sources[j]
    i, j = i[keep], j[keep]
    values = ol[i, j]
    distances = np.abs(labels[i] - labels[j])
    rho = float(spearman_rows(values, distances[None])[0]) if values.size >= 3 else float("nan")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(sources == s) for s in np.unique(sources)]
    null = []
    if np.isfinite(rho):
        for start in range(0, n_permutations, _CHUNK):
            n = min(_CHUNK, n_permutations - start)
            perm = np.tile(labels, (n, 1))
            for g in groups:
                perm[:, g] = rng.permuted(perm[:, g], axis=1)
            null.append(spearman_rows(values, np.abs(perm[:, i] - perm[:, j])))
    null = np.concatenate(null) if null else np.zeros(0)
    if np.isfinite(rho):
        finite = np.where(np.isfinite(null), null, 0.0)  # a constant-distance shuffle has rho 0
        p_negative = permutation_p(-finite, -rho)
        p_two = permutation_p(np.abs(finite), abs(rho))
    else:
        p_negative = p_two = float("nan")
    return DistanceTest(
        int(values.size), rho, p_negative, p_two, int(n_permutations), distances, values, sources[i], null
    )
