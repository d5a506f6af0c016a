"""Training loop of the default language model (AdamW, linear warmup + cosine decay)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from qlens_jax.default.training.gpt2 import GPT2, GPT2Config, next_token_loss


@dataclasses.dataclass(frozen=True)
class LMHyperparameters:
    steps: int = 600
    batch_size: int = 32
    peak_lr: float = 2e-3
    final_lr_fraction: float = 0.1
    warmup_steps: int = 60
    weight_decay: float = 0.1  # on 2-D weight matrices only (embeddings included, norms/biases not)
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip_norm: float = 1.0
    eval_every: int = 200


def heldout_windows(ids: np.ndarray, n_ctx: int) -> np.ndarray:
    """Non-overlapping `n_ctx`-token windows of the held-out stream (last partial one dropped)."""
    n = len(ids) // n_ctx
    return np.asarray(ids[: n * n_ctx], dtype=np.int32).reshape(n, n_ctx)


@eqx.filter_jit
def _window_losses(model: GPT2, windows: jax.Array) -> jax.Array:
    return jax.vmap(lambda w: next_token_loss(model, w[None]))(windows)


def eval_loss(model: GPT2, windows: np.ndarray, chunk: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over every prediction in every window."""
    losses = [
        np.asarray(_window_losses(model, jnp.asarray(windows[i : i + chunk]))) for i in range(0, len(windows), chunk)
    ]
    return float(np.concatenate(losses).mean())  # equal-length windows: mean of means is the mean


def _decay_mask(model: GPT2):
    """Weight decay on the embeddings and the blocks' weight matrices, not on norms or biases."""
    mask = jax.tree.map(lambda _: False, eqx.filter(model, eqx.is_array))
    b = lambda m: m.blocks  # noqa: E731
    matrices = lambda m: (  # noqa: E731
        m.wte,
        m.wpe,
        b(m).attn_c_attn_weight,
        b(m).attn_c_proj_weight,
        b(m).mlp_c_fc_weight,
        b(m).mlp_c_proj_weight,
    )
    return eqx.tree_at(matrices, mask, replace=(True,) * 6)


def train_lm(
    train_ids: np.ndarray,
    heldout: np.ndarray,
    config: GPT2Config,
    hp: LMHyperparameters,
    seed: int,
    log: Callable[[str], None] = print,
) -> tuple[GPT2, list[dict]]:
    """Windows of `n_positions + 1` tokens drawn uniformly with replacement (numpy seed `seed`)."""
    model = GPT2.init(config, jax.random.key(seed))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, hp.peak_lr, hp.warmup_steps, hp.steps, hp.peak_lr * hp.final_lr_fraction
    )
    params = eqx.filter(model, eqx.is_array)
    mask = _decay_mask(model)
    optimizer = optax.chain(
        optax.clip_by_global_norm(hp.grad_clip_norm),
        optax.adamw(schedule, hp.beta1, hp.beta2, weight_decay=hp.weight_decay, mask=mask),
    )
    opt_state = optimizer.init(params)

    @eqx.filter_jit(donate="all-except-first")
    def step(tokens, model, opt_state):
        loss, grads = eqx.filter_value_and_grad(next_token_loss)(model, tokens)
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    rng = np.random.default_rng(seed)
    width = config.n_positions + 1
    history, start, running = [], time.time(), []
    for i in range(1, hp.steps + 1):
        starts = rng.integers(0, len(train_ids) - width + 1, size=hp.batch_size)
        batch = np.stack([train_ids[s : s + width] for s in starts]).astype(np.int32)
        model, opt_state, loss = step(jnp.asarray(batch), model, opt_state)
        running.append(loss)
        if i % hp.eval_every == 0 or i == hp.steps:
            record = {
                "step": i,
                "train_loss": float(np.mean([float(x) for x in running])),
                "heldout_loss": eval_loss(model, heldout),
                "seconds": round(time.time() - start, 1),
            }
            running = []
            history.append(record)
            log(f"lm step {i}: {record}")
    return model, history
