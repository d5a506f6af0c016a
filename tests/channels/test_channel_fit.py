"""Closed-form reduced-rank regression: exact, robust to rank-deficient queries, and never beaten by training."""

import numpy as np
import pytest

from qlens_jax.channels import fit_metrics, reduced_rank_regression, split_indices, train_low_rank


def planted(n=240, d_in=12, d_out=10, rank=3, noise=0.3, seed=0):
    """Queries and responses `Y = X R.T + noise` with a full-rank `R`."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d_in))
    R = rng.normal(size=(d_out, d_in)) * np.linspace(2.0, 0.2, d_out)[:, None]
    return X, X @ R.T + noise * rng.normal(size=(n, d_out))


def sse(fitted, X, Y) -> float:
    return float(np.sum((fitted.predict(X) - Y) ** 2))


def eckart_young_error(fitted_values: np.ndarray, residual: float, rank: int) -> float:
    s = np.linalg.svd(fitted_values, compute_uv=False)
    return residual + float(np.sum(s[rank:] ** 2))


def test_orthonormal_queries_give_the_truncated_svd():
    rng = np.random.default_rng(1)
    X, _ = np.linalg.qr(rng.normal(size=(50, 8)))  # orthonormal columns: the fit is P_X Y
    Y = rng.normal(size=(50, 6))
    fitted = reduced_rank_regression(X, Y, 2)
    u, s, vt = np.linalg.svd(X.T @ Y, full_matrices=False)
    np.testing.assert_allclose(fitted.matrix().T, (u[:, :2] * s[:2]) @ vt[:2], atol=1e-12)
    assert fitted.A.shape == (2, 8) and fitted.B.shape == (6, 2)


@pytest.mark.parametrize("shape", [(30, 12), (9, 12)])  # duplicated columns; fewer rows than columns
def test_rank_deficient_queries_reach_the_optimum(shape):
    rng = np.random.default_rng(2)
    n, d = shape
    X = rng.normal(size=(n, d))
    X[:, 6:] = X[:, :6]  # rank 6 at most
    Y = rng.normal(size=(n, 5))
    rank = 3
    fitted = reduced_rank_regression(X, Y, rank)
    assert np.all(np.isfinite(fitted.A)) and np.all(np.isfinite(fitted.B))
    P = X @ np.linalg.pinv(X)
    best = eckart_young_error(P @ Y, float(np.sum((Y - P @ Y) ** 2)), rank)
    assert sse(fitted, X, Y) == pytest.approx(best, rel=1e-10, abs=1e-10)


def test_closed_form_is_a_local_minimum():
    X, Y = planted()
    fitted = reduced_rank_regression(X, Y, 3)
    base = sse(fitted, X, Y)
    rng = np.random.default_rng(3)
    for _ in range(20):
        moved = type(fitted)(
            fitted.A + 1e-3 * rng.normal(size=fitted.A.shape), fitted.B + 1e-3 * rng.normal(size=fitted.B.shape)
        )
        assert sse(moved, X, Y) >= base


def test_closed_form_training_loss_is_no_higher_than_adam():
    X, Y = planted()
    train, val = split_indices(len(X), np.random.default_rng(0))
    assert len(val) == 24 and len(train) == 216
    closed = reduced_rank_regression(X[train], Y[train], 3)
    # The paper's recipe (Adam, lr 1e-3, A ~ N(0, 0.01^2), B = 0), run long enough to converge here.
    trained = train_low_rank(X[train], Y[train], X[val], Y[val], 3, epochs=3000, seed=0)
    closed_mse = fit_metrics(closed.predict(X[train]), Y[train])["mse"]
    trained_mse = fit_metrics(trained.map.predict(X[train]), Y[train])["mse"]
    initial_mse = float(np.mean(Y[train] ** 2))  # B = 0 predicts zero
    # Meaningful: training converged to within 0.1 % of the optimum (from 5.6x the optimum at B = 0)...
    assert initial_mse > 5 * closed_mse
    assert trained_mse < 1.001 * closed_mse
    # ...and still did not beat the closed form (float64 evaluation of both).
    assert closed_mse <= trained_mse
    assert trained.train_loss.shape == (3000,) and trained.train_loss[0] == pytest.approx(initial_mse, rel=1e-5)


def test_training_keeps_the_best_validation_epoch():
    X, Y = planted(n=60, noise=2.0, seed=4)  # noisy and small: validation loss turns up
    train, val = split_indices(len(X), np.random.default_rng(1), 0.25)
    result = train_low_rank(X[train], Y[train], X[val], Y[val], 4, epochs=400, learning_rate=1e-2, seed=1)
    assert result.best_epoch == int(np.argmin(result.val_loss)) + 1
    kept = fit_metrics(result.map.predict(X[val]), Y[val])["mse"]
    assert kept == pytest.approx(float(result.val_loss.min()), rel=1e-4)


def test_fit_metrics_definitions():
    Y = np.array([[1.0, 0.0], [0.0, 2.0]])
    Y_hat = np.array([[1.0, 1.0], [0.0, 0.0]])
    m = fit_metrics(Y_hat, Y)
    assert m["mse"] == pytest.approx(5 / 4)
    assert m["explained_energy"] == pytest.approx(1 - 5 / 5)
    assert m["rel_frobenius"] == pytest.approx(1.0)
    assert m["cosine"] == pytest.approx((1 / np.sqrt(2) + 0.0) / 2)  # zero prediction row: cosine 0


def test_noise_free_closed_form_spans_the_top_response_subspace():
    """With responses `Y = X R.T` exactly and `X` of full column rank, the closed-form map's
    column space is the top-r principal subspace of `Y`: the construction the report warns about."""
    from qlens_jax.channels import column_basis, overlap
    from qlens_jax.channels.analysis import top_response_subspace

    X, Y = planted(n=100, noise=0.0, seed=5)
    fitted = reduced_rank_regression(X, Y, 3)
    assert overlap(column_basis(fitted.B, fitted.A), top_response_subspace(Y, 3)) == pytest.approx(1.0, abs=1e-10)
    shuffled = reduced_rank_regression(X[:30], Y[np.random.default_rng(0).permutation(100)[:30]], 3)  # n > d: not exact
    assert overlap(column_basis(shuffled.B, shuffled.A), top_response_subspace(Y, 3)) < 0.999
