"""Top activating contexts of every requested feature, gathered in batched jitted passes.

A *context* is one corpus window. For each feature and window, the feature's maximum
post-activation over the window's valid positions and where it occurs; over the corpus, the
`n_top` windows with the largest maxima are kept by a running top-k on device (per feature,
`lax.top_k` over the kept entries and the new batch's), so the whole corpus streams through
once for all features of all dictionaries. A context is *active* when its maximum is > 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from qlens_jax.baselines.splice import site_input
from qlens_jax.lens.chunks import iter_token_chunks
from qlens_jax.models import Transformer
from qlens_jax.progress import progress


@dataclass
class TopContexts:
    """The top contexts of one dictionary's requested features, best first (numpy).

    `values[f, j]`: feature `features[f]`'s maximum activation in context `contexts[f, j]`
    (a row of the corpus windows), reached at `positions[f, j]` on token `tokens[f, j]`.
    Unfilled slots have value `-inf` and index -1.
    """

    features: np.ndarray
    values: np.ndarray
    contexts: np.ndarray
    positions: np.ndarray
    tokens: np.ndarray

    @property
    def active(self) -> np.ndarray:
        """`[F, n_top]` whether each kept context has the feature active (maximum > 0)."""
        return self.values > 0

    @property
    def n_active(self) -> np.ndarray:
        return self.active.sum(1)


class _State(eqx.Module):
    values: Float[Array, "F K"]
    contexts: Int[Array, "F K"]
    positions: Int[Array, "F K"]
    tokens: Int[Array, "F K"]


def _empty(n_features: int, n_top: int) -> _State:
    minus = jnp.full((n_features, n_top), -1, jnp.int32)
    return _State(jnp.full((n_features, n_top), -jnp.inf, jnp.float32), minus, minus, minus)


def _merge(
    state: _State,
    acts: Float[Array, "b s F"],
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    rows: Int[Array, " b"],
) -> _State:
    masked = jnp.where(mask[..., None], acts.astype(jnp.float32), -jnp.inf)
    best = masked.max(1).T  # [F, b]
    where = masked.argmax(1).T.astype(jnp.int32)  # [F, b]
    valid_rows = (rows >= 0)[None, :]
    best = jnp.where(valid_rows, best, -jnp.inf)
    token = tokens[jnp.arange(tokens.shape[0])[None, :], where]  # [F, b]: the token at the maximum
    values = jnp.concatenate([state.values, best], axis=1)
    contexts = jnp.concatenate([state.contexts, jnp.broadcast_to(rows[None, :], best.shape)], axis=1)
    positions = jnp.concatenate([state.positions, where], axis=1)
    tokens_all = jnp.concatenate([state.tokens, token.astype(jnp.int32)], axis=1)
    kept_values, order = jax.lax.top_k(values, state.values.shape[1])
    take = lambda a: jnp.take_along_axis(a, order, axis=1)
    return _State(kept_values, take(contexts), take(positions), take(tokens_all))


@eqx.filter_jit
def _step(model: Transformer, dictionaries: tuple, features: tuple, states: tuple, tokens, mask, rows) -> tuple:
    _, residuals = model.run_with_residuals(tokens, mask)
    out = []
    for dictionary, ids, state in zip(dictionaries, features, states):
        acts = dictionary.encode(site_input(dictionary, residuals))[..., ids]
        out.append(_merge(state, acts, tokens, mask, rows))
    return tuple(out)


def top_contexts(
    model: Transformer,
    dictionaries,
    features,
    tokens: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    n_top: int = 20,
    sequences_per_chunk: int = 16,
    quiet: bool = True,
) -> list[TopContexts]:
    """Per dictionary, the `n_top` contexts (rows of `tokens [n, seq]`) with the largest
    maximum activation of each feature in `features[i]` (ids of dictionary `i`)."""
    dictionaries = tuple(dictionaries)
    ids = tuple(jnp.asarray(np.asarray(f, np.int32)) for f in features)
    tokens = np.asarray(tokens, np.int32)
    mask = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask, bool)
    states = tuple(_empty(len(f), n_top) for f in ids)
    n = tokens.shape[0]
    chunks = iter_token_chunks(tokens, mask, sequences_per_chunk)
    starts = range(0, n, sequences_per_chunk)
    for start, (chunk_tokens, chunk_mask) in progress(
        zip(starts, chunks), desc="contexts", quiet=quiet, unit="chunk", total=len(starts)
    ):
        rows = np.arange(start, start + sequences_per_chunk)
        rows = np.where(rows < n, rows, -1).astype(np.int32)
        states = _step(
            model, dictionaries, ids, states, jnp.asarray(chunk_tokens), jnp.asarray(chunk_mask), jnp.asarray(rows)
        )
    return [
        TopContexts(
            np.asarray(f), np.asarray(s.values), np.asarray(s.contexts), np.asarray(s.positions), np.asarray(s.tokens)
        )
        for f, s in zip(ids, states)
    ]
