"""The two-stage top-k gives exactly `lax.top_k`'s values and ids, in its order: ties, infinities,
signed zeros, denormals and NaN included, on both sides, in both its paths."""

from functools import partial

import jax
import numpy as np
import pytest

from qlens_jax.readout.topk import top_k

GROUP = 16


@partial(jax.jit, static_argnums=(1, 2, 3))
def _both(x, k: int, negate: bool, group: int):
    return top_k(x, k, negate, group), jax.lax.top_k(-x if negate else x, k)


def _check(x: np.ndarray, k: int, group: int = GROUP) -> None:
    for negate in (False, True):
        (values, ids), (expected_values, expected_ids) = _both(np.asarray(x, np.float32), k, negate, group)
        np.testing.assert_array_equal(np.asarray(ids), np.asarray(expected_ids))
        # bit patterns: -0.0 and +0.0 (and NaNs) must match too
        np.testing.assert_array_equal(np.asarray(values).view(np.int32), np.asarray(expected_values).view(np.int32))


def _normal(n: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, vocab)).astype(np.float32)


@pytest.mark.parametrize("vocab", [640, 1001])
@pytest.mark.parametrize("k", [1, 5, 25])
def test_random_rows(vocab, k):
    _check(_normal(8, vocab), k)


def test_default_group():
    _check(_normal(4, 3000), 25, group=64)


def test_many_ties():
    x = _normal(16, 1001)
    _check(np.round(x), 5)  # a handful of distinct values
    _check(np.round(x * 2) / 2, 25)
    _check(np.floor(x / 4), 10)  # almost every entry 0 or -1


@pytest.mark.parametrize("value", [1.5, 0.0, -0.0, np.inf, -np.inf])
def test_all_equal_rows(value):
    _check(np.full((3, 1001), value, np.float32), 7)


def test_infinities():
    x = _normal(12, 1001)
    rng = np.random.default_rng(1)
    x[rng.random(x.shape) < 0.02] = np.inf
    x[rng.random(x.shape) < 0.02] = -np.inf
    x[0, :] = -np.inf
    x[1, :900] = -np.inf  # the finite entries only in the last groups
    x[2, 997:] = np.inf  # in the partial last group
    _check(x, 25)


def test_vocab_at_most_k_groups():
    _check(_normal(4, 80), 5)  # vocab == k * group: plain lax.top_k
    _check(np.round(_normal(4, 50)), 5)
    _check(_normal(4, 7), 7)  # k == vocab


def test_signed_zeros_and_denormals():
    """`lax.top_k` puts +0 above -0 and tells denormals from zero; a max does neither."""
    denormal = np.float32(1e-45)
    x = np.full((5, 1001), -1.0, np.float32)
    x[0, :500] = -0.0
    x[0, 900] = 0.0  # the +0 that must come first is in a late group
    x[1, ::3] = 0.0
    x[1, 1::3] = -0.0
    x[1, 990] = denormal
    x[2, :] = -denormal
    x[2, 700] = -0.0
    x[3, 3::7] = 2.0  # fewer than k positive entries, then zeros
    x[3, 800] = 0.0
    x[3, 5] = -0.0
    x[4, [3, 100, 200]] = -0.0, 0.0, -0.0  # fewer than k zero groups: ranked above the k-th
    _check(x, 25)
    _check(np.zeros((2, 1001), np.float32), 3)


def test_nan():
    x = _normal(6, 1001)
    x[0, 17] = np.nan
    x[1, 500] = -np.nan
    x[2, ::2] = np.nan
    x[3, :] = -np.nan
    _check(x, 5)
