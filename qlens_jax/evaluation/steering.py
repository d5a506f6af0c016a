"""Steering for the output score (docs/definitions.md section 5): calibrate alpha, then rank changes.

Steering a feature = splicing the dictionary in and clamping the feature's post-activation to
`alpha` at every valid position of every prefix, keeping the reconstruction error
(`baselines.splice.set_feature`, the same code as the token-change baseline). The splice is at
the dictionary's own site, a residual point, an MLP output or a module output (`z`,
`attn_out`, `mlp_out`); `baselines.splice` says how each reaches the residual stream.

- `calibrate_alphas`: for each (feature, target) pair, the `alpha > 0` at which the mean over
  prefixes of `KL(p_clean || p_steered)` of the next-token distribution (after the prefix's
  last token) is the target (0.25 and 0.5 in the paper). Doubling from `alpha0` until the KL
  reaches the target, then bisection, all pairs at once inside one `lax.while_loop`; stops
  when every pair is within `rtol` of its target or after `max_iter` evaluations. The best
  alpha seen is returned with its KL (the KL is not always monotone in alpha, and may never
  reach a target below `max_alpha`: check `reached`).
- `rank_changes`: for each feature, the change in each vocabulary token's rank percentile
  (0 = least likely, 1 = most likely) from the clean to the steered distribution, averaged over
  prefixes, over the feature's alphas, and, with `generate_tokens > 0`, over that many steps of
  sampling from the steered model (temperature `temperature`; the clean distribution is taken
  on the same, steered, context), as the reference does (20 tokens, temperature 0.75).
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from qlens_jax.baselines.splice import set_feature, splice_point
from qlens_jax.lens.transport import run_from
from qlens_jax.dictionaries import Dictionary
from qlens_jax.models import Transformer


def _last_logprobs(model: Transformer, final: Float[Array, "b s d"], lengths: Int[Array, " b"]) -> Float[Array, "b vocab"]:
    h = final[jnp.arange(final.shape[0]), lengths - 1]
    return jax.nn.log_softmax(model.unembed(h).astype(jnp.float32), axis=-1)


def _kl(clean: Float[Array, "b vocab"], steered: Float[Array, "b vocab"]) -> Float[Array, ""]:
    return jnp.mean(jnp.sum(jnp.exp(clean) * (clean - steered), axis=-1))


def rank_percentiles(logprobs: Float[Array, "b vocab"]) -> Float[Array, "b vocab"]:
    """Each token's rank among the vocabulary, scaled to [0, 1] (1 = most likely)."""
    ranks = jnp.argsort(jnp.argsort(logprobs, axis=-1), axis=-1)
    return ranks.astype(jnp.float32) / (logprobs.shape[-1] - 1)


class Calibration(NamedTuple):
    alphas: Float[Array, "F T"]
    kl: Float[Array, "F T"]
    reached: Bool[Array, "F T"]
    iterations: Int[Array, ""]


@eqx.filter_jit
def calibrate_alphas(
    model: Transformer,
    dictionary: Dictionary,
    tokens: Int[Array, "P S"],
    mask: Bool[Array, "P S"],
    features: Int[Array, " F"],
    targets: Float[Array, " T"],
    *,
    alpha0: float = 1.0,
    max_alpha: float = 1e6,
    max_iter: int = 64,
    rtol: float = 0.02,
    config_chunk: int = 8,
) -> Calibration:
    """Per (feature, target), the clamp value whose mean next-token KL is the target."""
    n_f, n_t = features.shape[0], targets.shape[0]
    site = splice_point(model, dictionary, tokens, mask)
    lengths = mask.sum(1)
    clean = _last_logprobs(model, run_from(model, site.h, mask, site.point), lengths)
    cfg_features = jnp.repeat(features, n_t)
    target = jnp.tile(targets.astype(jnp.float32), n_f)
    n = target.shape[0]

    def kl_at(alphas):
        def one(args):
            feature, alpha = args
            return _kl(clean, _last_logprobs(model, set_feature(model, dictionary, site, mask, feature, alpha), lengths))

        return jax.lax.map(one, (cfg_features, alphas), batch_size=config_chunk)

    def body(state):
        lo, hi, bracketed, done, best_alpha, best_err, best_kl, it = state
        candidate = jnp.where(bracketed, 0.5 * (lo + hi), hi)
        kl = kl_at(candidate)
        err = jnp.abs(kl - target) / target
        better = (err < best_err) & ~done
        hit = kl >= target
        new_lo = jnp.where(hit, lo, candidate)
        new_hi = jnp.where(hit, candidate, jnp.where(bracketed, hi, 2.0 * hi))
        new_bracketed = bracketed | hit
        converged = (err <= rtol) | (~new_bracketed & (new_hi > max_alpha)) | (new_bracketed & (new_hi - new_lo <= 1e-6 * new_hi))
        keep = lambda old, new: jnp.where(done, old, new)
        return (keep(lo, new_lo), keep(hi, new_hi), keep(bracketed, new_bracketed), done | converged,
                jnp.where(better, candidate, best_alpha), jnp.where(better, err, best_err), jnp.where(better, kl, best_kl), it + 1)

    def cond(state):
        return (state[-1] < max_iter) & ~jnp.all(state[3])

    zeros, false = jnp.zeros(n, jnp.float32), jnp.zeros(n, bool)
    init = (zeros, jnp.full(n, alpha0, jnp.float32), false, false, zeros, jnp.full(n, jnp.inf, jnp.float32), zeros, jnp.asarray(0))
    _, _, _, _, alpha, err, kl, it = jax.lax.while_loop(cond, body, init)
    shape = (n_f, n_t)
    return Calibration(alpha.reshape(shape), kl.reshape(shape), (err <= rtol).reshape(shape), it)


def _steered_changes(model, dictionary, tokens, mask, feature, alpha, key, steps: int, temperature: float):
    """Sum over `steps` steps of the prefix-mean rank-percentile change, sampling from the steered model."""
    n_prefixes, width = tokens.shape
    tokens = jnp.concatenate([tokens, jnp.zeros((n_prefixes, steps - 1), tokens.dtype)], axis=1) if steps > 1 else tokens
    mask = jnp.concatenate([mask, jnp.zeros((n_prefixes, steps - 1), bool)], axis=1) if steps > 1 else mask
    rows = jnp.arange(n_prefixes)

    def step(carry, key_t):
        tokens, mask, lengths, total = carry
        site = splice_point(model, dictionary, tokens, mask)
        clean = _last_logprobs(model, run_from(model, site.h, mask, site.point), lengths)
        steered = _last_logprobs(model, set_feature(model, dictionary, site, mask, feature, alpha), lengths)
        total = total + jnp.mean(rank_percentiles(steered) - rank_percentiles(clean), axis=0)
        if steps > 1:
            sampled = jax.random.categorical(key_t, steered / temperature, axis=-1).astype(tokens.dtype)
            room = lengths < tokens.shape[1]
            at = jnp.minimum(lengths, tokens.shape[1] - 1)
            tokens = tokens.at[rows, at].set(jnp.where(room, sampled, tokens[rows, at]))
            mask = mask.at[rows, at].set(mask[rows, at] | room)
            lengths = lengths + room
        return (tokens, mask, lengths, total), None

    init = (tokens, mask, mask.sum(1), jnp.zeros(model.config.vocab_size, jnp.float32))
    (_, _, _, total), _ = jax.lax.scan(step, init, jax.random.split(key, steps))
    return total


@eqx.filter_jit
def rank_changes(
    model: Transformer,
    dictionary: Dictionary,
    tokens: Int[Array, "P S"],
    mask: Bool[Array, "P S"],
    features: Int[Array, " F"],
    alphas: Float[Array, "F T"],
    key,
    *,
    generate_tokens: int = 0,
    temperature: float = 0.75,
    config_chunk: int = 8,
) -> Float[Array, "F vocab"]:
    """Mean change in rank percentile of every token (see the module docstring)."""
    n_f, n_t = alphas.shape
    steps = max(1, generate_tokens)
    keys = jax.random.split(key, n_f * n_t)

    def one(args):
        feature, alpha, k = args
        return _steered_changes(model, dictionary, tokens, mask, feature, alpha, k, steps, temperature)

    totals = jax.lax.map(one, (jnp.repeat(features, n_t), alphas.reshape(-1), keys), batch_size=config_chunk)
    return totals.reshape(n_f, n_t, -1).mean(1) / steps
