"""The paper's gradient training of a low-rank map, for comparison with the closed form.

Adam (learning rate 1e-3) on the mean squared error of `Y_hat = X @ A.T @ B.T`, full batch,
1000 epochs, `A ~ N(0, 0.01^2)`, `B = 0`; after every epoch's update the validation loss is
measured and the parameters of the best validation epoch are kept. The whole loop is one
`lax.scan` inside one `jit` (compiled once per shape).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax

from qlens_jax.channels.fit import LowRankMap
from qlens_jax.numerics import applies_precision


@dataclass(frozen=True)
class TrainedMap:
    map: LowRankMap  # parameters of the best validation epoch
    best_epoch: int  # 1-based
    train_loss: np.ndarray  # [epochs], full-batch MSE before each epoch's update
    val_loss: np.ndarray  # [epochs], validation MSE after each epoch's update


def _mse(params, X, Y):
    pred = jnp.dot(jnp.dot(X, params["A"].T), params["B"].T)
    return jnp.mean((pred - Y) ** 2)


@partial(jax.jit, static_argnames=("rank", "epochs", "learning_rate", "init_scale"))
def _train(key, X, Y, X_val, Y_val, *, rank: int, epochs: int, learning_rate: float, init_scale: float):
    params = {
        "A": init_scale * jax.random.normal(key, (rank, X.shape[1]), jnp.float32),
        "B": jnp.zeros((Y.shape[1], rank), jnp.float32),
    }
    optimizer = optax.adam(learning_rate)

    def epoch(carry, index):
        params, state, best, best_val, best_epoch = carry
        loss, grads = jax.value_and_grad(_mse)(params, X, Y)
        updates, state = optimizer.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        val = _mse(params, X_val, Y_val)
        better = val < best_val
        best = jax.tree.map(lambda new, old: jnp.where(better, new, old), params, best)
        carry = (params, state, best, jnp.where(better, val, best_val), jnp.where(better, index + 1, best_epoch))
        return carry, (loss, val)

    init = (params, optimizer.init(params), params, jnp.asarray(jnp.inf, jnp.float32), jnp.asarray(0, jnp.int32))
    (_, _, best, _, best_epoch), (losses, vals) = jax.lax.scan(epoch, init, jnp.arange(epochs, dtype=jnp.int32))
    return best, best_epoch, losses, vals


@applies_precision
def train_low_rank(
    X_train: np.ndarray,
    Y_train: np.ndarray,
    X_val: np.ndarray,
    Y_val: np.ndarray,
    rank: int,
    *,
    epochs: int = 1000,
    learning_rate: float = 1e-3,
    init_scale: float = 0.01,
    seed: int = 0,
    precision: str = "float32",
) -> TrainedMap:
    """Train `W = B A` of rank `rank` with Adam and keep the best validation epoch
    (`precision`: how the products multiply, `qlens_jax.numerics`; float32 by default)."""
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    best, best_epoch, losses, vals = _train(
        jax.random.PRNGKey(seed),
        f32(X_train),
        f32(Y_train),
        f32(X_val),
        f32(Y_val),
        rank=int(rank),
        epochs=int(epochs),
        learning_rate=float(learning_rate),
        init_scale=float(init_scale),
    )
    fitted = LowRankMap(A=np.asarray(best["A"]), B=np.asarray(best["B"]))
    return TrainedMap(fitted, int(best_epoch), np.asarray(losses), np.asarray(vals))
