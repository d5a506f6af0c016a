"""Permutation tests: small p on planted structure, uniform p under the null."""

import numpy as np
import pytest
from scipy.stats import kstest

from qlens_jax.channels import auc, column_basis, destination_test, distance_test, overlap_matrix, permutation_p

D, R = 24, 3


def maps_with_destinations(sources, destinations, shared: float, seed: int):
    """One basis per (source, destination); with `shared > 0` maps of a destination share
    most of a destination-specific subspace (planted channels), with 0 they are independent."""
    rng = np.random.default_rng(seed)
    channel = {t: rng.normal(size=(D, R)) for t in set(destinations)}
    return [column_basis(shared * channel[t] + rng.normal(size=(D, R))) for t in destinations]


def grid(n_sources=4, n_layers=6):
    pairs = [(s, t) for s in range(n_sources) for t in range(s + 1, n_layers)]
    return [s for s, _ in pairs], [t for _, t in pairs]


def test_auc_matches_brute_force():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 5, 20).astype(float)
    brute = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert auc(pos, neg) == pytest.approx(brute)


def test_permutation_p_definition():
    null = np.array([0.1, 0.5, 0.5, 0.9])
    assert permutation_p(null, 0.5) == pytest.approx((3 + 1) / 5)
    assert permutation_p(null, 1.0) == pytest.approx(1 / 5)


def test_planted_channels_give_small_p():
    sources, destinations = grid()
    ol = overlap_matrix(maps_with_destinations(sources, destinations, shared=3.0, seed=1))
    test = destination_test(ol, destinations, n_permutations=2000, seed=0)
    assert test.within_mean > test.between_mean + 0.3
    assert test.auc > 0.95
    assert test.p_gap == pytest.approx(1 / 2001) and test.p_auc == pytest.approx(1 / 2001)
    assert test.n_within + test.n_between == len(destinations) * (len(destinations) - 1) // 2


def test_null_p_values_look_uniform():
    sources, destinations = grid()
    p_gap, p_auc = [], []
    for seed in range(40):
        ol = overlap_matrix(maps_with_destinations(sources, destinations, shared=0.0, seed=100 + seed))
        test = destination_test(ol, destinations, n_permutations=199, seed=seed)
        p_gap.append(test.p_gap)
        p_auc.append(test.p_auc)
        if seed == 0:
            assert test.p_gap > 0.05 and test.p_auc > 0.05
    for ps in (p_gap, p_auc):
        assert kstest(ps, "uniform").pvalue > 0.01
        assert 0.3 < np.mean(ps) < 0.7


def decaying_overlaps(sources, destinations, decay: float, seed: int):
    """Synthetic overlap matrix: same-source pairs overlap `exp(-decay |t_i - t_j|)` plus noise."""
    rng = np.random.default_rng(seed)
    t = np.asarray(destinations)
    ol = np.exp(-decay * np.abs(t[:, None] - t[None, :])) + 0.1 * rng.normal(size=(t.size, t.size))
    ol = (ol + ol.T) / 2
    np.fill_diagonal(ol, 1.0)
    return ol


def test_distance_test_detects_decay_and_is_calibrated_under_the_null():
    sources, destinations = grid()
    planted = distance_test(decaying_overlaps(sources, destinations, 0.8, 0), sources, destinations, 2000, seed=0)
    assert planted.rho < -0.5 and planted.p_negative < 0.005
    assert planted.n_pairs == sum(k * (k - 1) // 2 for k in (5, 4, 3, 2))
    null_p = [
        distance_test(
            decaying_overlaps(sources, destinations, 0.0, 50 + k), sources, destinations, 199, seed=k
        ).p_negative
        for k in range(30)
    ]
    assert kstest(null_p, "uniform").pvalue > 0.01
