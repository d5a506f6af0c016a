"""Overlap of the column spaces of low-rank maps (docs/definitions.md section 6).

`OL(W_i, W_j) = ||Q_i.T Q_j||_F^2 / k`, with `Q` an orthonormal basis of a map's column space
(left singular vectors whose singular values exceed `1e-6` of the largest) and `k` the smaller
of the two ranks. `OL` is the mean squared cosine of the principal angles between the two
subspaces over the `k` angles: 1 when one subspace contains the other, 0 when they are
orthogonal, unchanged by a common rotation, and `r / d` on average for independent uniformly
random `r`-dimensional subspaces of `R^d`.
"""

from __future__ import annotations

import numpy as np

RELATIVE_TOLERANCE = 1e-6


def column_basis(B: np.ndarray, A: np.ndarray | None = None, tol: float = RELATIVE_TOLERANCE) -> np.ndarray:
    """Orthonormal basis `[d_out, k]` of the column space of `B @ A` (or of `B` alone).

    For factors `B [d_out, r]`, `A [r, d_in]` the SVD of `B @ A` is taken through the QR of
    `B`, `B @ A = Q (R A)`: the same left singular vectors and values as the full `[d_out, d_in]`
    SVD, at the cost of an `[r, d_in]` one.
    """
    B = np.asarray(B, np.float64)
    if A is None:
        u, s, _ = np.linalg.svd(B, full_matrices=False)
    else:
        q, r = np.linalg.qr(B)
        u_small, s, _ = np.linalg.svd(r @ np.asarray(A, np.float64), full_matrices=False)
        u = q @ u_small
    if s.size == 0 or s[0] == 0:
        return np.zeros((B.shape[0], 0))
    return u[:, s > tol * s[0]]


def overlap(Q_i: np.ndarray, Q_j: np.ndarray) -> float:
    """`||Q_i.T Q_j||_F^2 / min(rank_i, rank_j)` of two orthonormal bases (nan if one is empty)."""
    k = min(Q_i.shape[1], Q_j.shape[1])
    if k == 0:
        return float("nan")
    return float(np.sum((Q_i.T @ Q_j) ** 2) / k)


def overlap_matrix(bases: list[np.ndarray]) -> np.ndarray:
    """Symmetric `[M, M]` matrix of `overlap` between every two bases (diagonal 1)."""
    m = len(bases)
    out = np.ones((m, m))
    for i in range(m):
        for j in range(i + 1, m):
            out[i, j] = out[j, i] = overlap(bases[i], bases[j])
    return out


def random_subspace_overlap(rank: int, dim: int) -> float:
    """Expected overlap of two independent uniform random `rank`-dimensional subspaces of `R^dim`."""
    return rank / dim
