"""Low-rank maps `W = B A` from queries to responses, fitted in closed form, and fit metrics.

Rows are examples: a map predicts `Y_hat = X @ W.T = X @ A.T @ B.T` with `A [r, d_in]`,
`B [d_out, r]`; the column space of `W` (a subspace of the response space) is `span(B)`.

The closed form is reduced-rank regression with identity weighting, the exact minimizer of
`||Y - X W.T||_F^2` over maps of rank at most `r`: the least-squares fit `X beta` (minimum-norm
`lstsq`, so rank-deficient `X` is fine) followed by projection onto the top-`r` right singular
subspace `V_r` of the fitted values: `W.T = beta V_r V_r.T`. It is optimal because the squared
error splits into `||Y - P_X Y||^2` (fixed) plus `||P_X Y - X W.T||^2`, whose best rank-`r`
value is Eckart-Young's truncation of `P_X Y = X beta`, reached by `X beta V_r V_r.T`.

The fits run in float64 numpy: each is an `[n, d]` least-squares problem and one SVD, far below
the cost of the responses, and float64 keeps "exact" meaning exact in the comparison with the
optax-trained maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

METRICS = ("mse", "rel_frobenius", "cosine", "explained_energy")


@dataclass(frozen=True)
class LowRankMap:
    """`W = B @ A`: `A [r, d_in]`, `B [d_out, r]`."""

    A: np.ndarray
    B: np.ndarray

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    def matrix(self) -> np.ndarray:
        return self.B @ self.A

    def predict(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, np.float64) @ self.A.T.astype(np.float64)) @ self.B.T.astype(np.float64)


def reduced_rank_regression(X: np.ndarray, Y: np.ndarray, rank: int) -> LowRankMap:
    """The rank-`rank` map minimizing `||Y - X W.T||_F^2` (see the module docstring)."""
    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float64)
    if X.ndim != 2 or Y.ndim != 2 or X.shape[0] != Y.shape[0]:
        raise ValueError(f"X [n, d_in] and Y [n, d_out] need the same rows, got {X.shape} and {Y.shape}")
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    beta, *_ = np.linalg.lstsq(X, Y, rcond=None)  # [d_in, d_out], minimum norm
    _, _, vt = np.linalg.svd(X @ beta, full_matrices=False)
    V = vt[: min(rank, vt.shape[0])].T  # [d_out, r]
    return LowRankMap(A=(beta @ V).T, B=V)


def row_cosines(Y_hat: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Cosine of each predicted row with its target row; 0 where either is the zero vector."""
    dots = np.einsum("nd,nd->n", Y_hat, Y)
    norms = np.linalg.norm(Y_hat, axis=1) * np.linalg.norm(Y, axis=1)
    return np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)


def fit_metrics(Y_hat: np.ndarray, Y: np.ndarray) -> dict[str, float]:
    """MSE (mean over entries), relative Frobenius error `||Y_hat - Y|| / ||Y||`, mean row
    cosine, and explained energy `1 - ||Y_hat - Y||^2 / ||Y||^2` (the paper's Table 12)."""
    Y_hat = np.asarray(Y_hat, np.float64)
    Y = np.asarray(Y, np.float64)
    if Y.size == 0:
        return dict.fromkeys(METRICS, float("nan"))
    err = float(np.sum((Y_hat - Y) ** 2))
    energy = float(np.sum(Y**2))
    rel = np.sqrt(err / energy) if energy > 0 else np.nan
    return {
        "mse": err / Y.size,
        "rel_frobenius": float(rel),
        "cosine": float(row_cosines(Y_hat, Y).mean()),
        "explained_energy": float(1.0 - err / energy) if energy > 0 else np.nan,
    }


def split_indices(n: int, rng: np.random.Generator, validation_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of `n` rows: (train, validation), the validation share rounded
    to the nearest row but at least one row on each side when `n >= 2`."""
    n_val = int(round(validation_fraction * n))
    if n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    order = rng.permutation(n)
    return np.sort(order[n_val:]), np.sort(order[:n_val])
