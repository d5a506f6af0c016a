"""Column-space overlap: 1 for identical subspaces, 0 for orthogonal ones, rotation invariant."""

import numpy as np
import pytest

from qlens_jax.channels import column_basis, overlap, overlap_matrix


def random_factors(rng, d=20, r=4, d_in=15):
    return rng.normal(size=(d, r)), rng.normal(size=(r, d_in))


def test_identical_subspaces_overlap_one():
    rng = np.random.default_rng(0)
    B, A = random_factors(rng)
    G = rng.normal(size=(4, 4))  # another factorization of a map with the same column space
    assert overlap(column_basis(B, A), column_basis(B @ G, rng.normal(size=(4, 15)))) == pytest.approx(1.0, abs=1e-12)
    assert overlap(column_basis(B, A), column_basis(B @ A)) == pytest.approx(1.0, abs=1e-12)


def test_orthogonal_subspaces_overlap_zero():
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.normal(size=(20, 8)))
    A = rng.normal(size=(4, 15))
    assert overlap(column_basis(Q[:, :4], A), column_basis(Q[:, 4:], A)) == pytest.approx(0.0, abs=1e-12)


def test_partial_overlap_and_smaller_rank():
    e = np.eye(6)
    assert overlap(column_basis(e[:, [0, 1]]), column_basis(e[:, [0, 2]])) == pytest.approx(0.5)
    # k is the smaller rank: a line inside a plane overlaps fully.
    assert overlap(column_basis(e[:, [0]]), column_basis(e[:, [0, 1]])) == pytest.approx(1.0)


def test_rotation_invariance():
    rng = np.random.default_rng(2)
    maps = [random_factors(rng) for _ in range(4)]
    R, _ = np.linalg.qr(rng.normal(size=(20, 20)))
    before = overlap_matrix([column_basis(B, A) for B, A in maps])
    after = overlap_matrix([column_basis(R @ B, A) for B, A in maps])
    np.testing.assert_allclose(after, before, atol=1e-12)
    assert np.all((before >= 0) & (before <= 1 + 1e-12))
    np.testing.assert_allclose(np.diag(before), 1.0)


def test_rank_threshold_drops_null_directions():
    rng = np.random.default_rng(3)
    B = rng.normal(size=(10, 3))
    A = rng.normal(size=(3, 7))
    A[2] = 1e-9 * A[0]  # third direction below 1e-6 of the largest singular value
    assert column_basis(B, A).shape == (10, 2)
    assert column_basis(np.zeros((10, 3)), A).shape == (10, 0)


def test_random_subspaces_overlap_about_r_over_d():
    rng = np.random.default_rng(4)
    values = [
        overlap(column_basis(rng.normal(size=(40, 5))), column_basis(rng.normal(size=(40, 5)))) for _ in range(200)
    ]
    assert np.mean(values) == pytest.approx(5 / 40, abs=0.01)
