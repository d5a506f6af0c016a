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
from qlens_jax.dictionaries import Dictionary
from qlens_jax.lens.transport import run_from
from qlens_jax.models import Transformer

# How `calibrate_alphas` measures the KL and searches alpha, and which run is "clean".
KL_POSITIONS = ("last", "all")
ALPHA_SEARCHES = ("bisection", "integer")
# The authors' integer search: alpha in [1, 1000] (negative targets: [-1000, -1]), stopping once
# the KL lies in [target, target + 0.1].
INTEGER_RANGE = (1, 1000)
INTEGER_TOLERANCE = 0.1


def _last_logprobs(
    model: Transformer, final: Float[Array, "b s d"], lengths: Int[Array, " b"]
) -> Float[Array, "b vocab"]:
    h = final[jnp.arange(final.shape[0]), lengths - 1]
    return jax.nn.log_softmax(model.unembed(h).astype(jnp.float32), axis=-1)


def _kl(clean: Float[Array, "b vocab"], steered: Float[Array, "b vocab"]) -> Float[Array, ""]:
    return jnp.mean(jnp.sum(jnp.exp(clean) * (clean - steered), axis=-1))


def _kl_all_positions(
    model: Transformer, clean: Float[Array, "b s d"], steered: Float[Array, "b s d"], mask: Bool[Array, "b s"]
) -> Float[Array, ""]:
    """The authors' KL: per prefix, the mean over its valid positions of KL(clean || steered) of
    the next-token distributions; then the mean over prefixes."""
    logp = jax.nn.log_softmax(model.unembed(clean).astype(jnp.float32), axis=-1)
    logq = jax.nn.log_softmax(model.unembed(steered).astype(jnp.float32), axis=-1)
    per_position = jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)
    per_prefix = jnp.sum(jnp.where(mask, per_position, 0.0), axis=1) / jnp.maximum(mask.sum(1), 1)
    return jnp.mean(per_prefix)


def rank_percentiles(logprobs: Float[Array, "b vocab"]) -> Float[Array, "b vocab"]:
    """Each token's rank among the vocabulary, scaled to [0, 1] (1 = most likely)."""
    ranks = jnp.argsort(jnp.argsort(logprobs, axis=-1), axis=-1)
    return ranks.astype(jnp.float32) / (logprobs.shape[-1] - 1)


class Calibration(NamedTuple):
    alphas: Float[Array, "F T"]
    kl: Float[Array, "F T"]
    reached: Bool[Array, "F T"]
    iterations: Int[Array, ""]


def _bisection(kl_at, target, alpha0: float, max_alpha: float, max_iter: int, rtol: float):
    """Doubling, then bisection on |alpha|, for every pair at once; the best alpha seen (see
    the module docstring). `kl_at(alphas)` gives each pair's KL."""
    n = target.shape[0]
    sign, goal = jnp.sign(target), jnp.abs(target)

    def body(state):
        lo, hi, bracketed, done, best_alpha, best_err, best_kl, it = state
        candidate = jnp.where(bracketed, 0.5 * (lo + hi), hi)
        kl = kl_at(sign * candidate)
        err = jnp.abs(kl - goal) / goal
        better = (err < best_err) & ~done
        hit = kl >= goal
        new_lo = jnp.where(hit, lo, candidate)
        new_hi = jnp.where(hit, candidate, jnp.where(bracketed, hi, 2.0 * hi))
        new_bracketed = bracketed | hit
        converged = (
            (err <= rtol)
            | (~new_bracketed & (new_hi > max_alpha))
            | (new_bracketed & (new_hi - new_lo <= 1e-6 * new_hi))
        )
        keep = lambda old, new: jnp.where(done, old, new)
        return (
            keep(lo, new_lo),
            keep(hi, new_hi),
            keep(bracketed, new_bracketed),
            done | converged,
            jnp.where(better, candidate, best_alpha),
            jnp.where(better, err, best_err),
            jnp.where(better, kl, best_kl),
            it + 1,
        )

    def cond(state):
        return (state[-1] < max_iter) & ~jnp.all(state[3])

    zeros, false = jnp.zeros(n, jnp.float32), jnp.zeros(n, bool)
    init = (
        zeros,
        jnp.full(n, alpha0, jnp.float32),
        false,
        false,
        zeros,
        jnp.full(n, jnp.inf, jnp.float32),
        zeros,
        jnp.asarray(0),
    )
    _, _, _, _, alpha, err, kl, it = jax.lax.while_loop(cond, body, init)
    return sign * alpha, kl, err <= rtol, it


def _integer_search(kl_at, target):
    """The authors' `_get_activation_for_kl`, for every pair at once: integer bisection of alpha
    in [1, 1000] ([-1000, -1] for a negative target) until the KL lies in [|target|,
    |target| + 0.1] or the interval closes; the last midpoint is the alpha."""
    n = target.shape[0]
    negative, goal = target < 0, jnp.abs(target)
    low = jnp.where(negative, -INTEGER_RANGE[1], INTEGER_RANGE[0]).astype(jnp.int32)
    high = jnp.where(negative, -INTEGER_RANGE[0], INTEGER_RANGE[1]).astype(jnp.int32)

    def active(low, high, kl):
        return (low + 1 < high) & ((kl < goal) | (kl > goal + INTEGER_TOLERANCE))

    def body(state):
        low, high, mid, kl, it = state
        run = active(low, high, kl)
        new_mid = jnp.floor_divide(low + high, 2)
        new_kl = kl_at(new_mid.astype(jnp.float32))
        shrink = jnp.where(negative, new_kl < goal, new_kl > goal)
        return (
            jnp.where(run & ~shrink, new_mid, low),
            jnp.where(run & shrink, new_mid, high),
            jnp.where(run, new_mid, mid),
            jnp.where(run, new_kl, kl),
            it + 1,
        )

    def cond(state):
        low, high, _, kl, _ = state
        return jnp.any(active(low, high, kl))

    init = (low, high, jnp.zeros(n, jnp.int32), jnp.full(n, -1.0, jnp.float32), jnp.asarray(0))
    _, _, mid, kl, it = jax.lax.while_loop(cond, body, init)
    reached = (kl >= goal) & (kl <= goal + INTEGER_TOLERANCE)
    return mid.astype(jnp.float32), kl, reached, it


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
    kl_positions: str = "last",
    search: str = "bisection",
    error_term: bool = True,
) -> Calibration:
    """Per (feature, target), the clamp value whose mean KL is the target (a negative target:
    a negative clamp value whose KL is |target|).

    `kl_positions`: "last" (the next token after each prefix) or "all" (every valid position of
    each prefix, the authors' definition); `search`: "bisection" (real alpha, relative tolerance
    `rtol`) or "integer" (the authors' integer search); `error_term=False`: both runs use the
    dictionary's reconstruction at its site (the authors' calibration)."""
    if kl_positions not in KL_POSITIONS or search not in ALPHA_SEARCHES:
        raise ValueError(
            f"kl_positions {kl_positions!r} / search {search!r}: choose from {KL_POSITIONS} / {ALPHA_SEARCHES}"
        )
    n_f, n_t = features.shape[0], targets.shape[0]
    site = splice_point(model, dictionary, tokens, mask, error_term=error_term)
    lengths = mask.sum(1)
    clean_final = run_from(model, site.h, mask, site.point)
    clean = _last_logprobs(model, clean_final, lengths)
    cfg_features = jnp.repeat(features, n_t)
    target = jnp.tile(targets.astype(jnp.float32), n_f)

    def kl_of(feature, alpha):
        steered = set_feature(model, dictionary, site, mask, feature, alpha)
        if kl_positions == "all":
            return _kl_all_positions(model, clean_final, steered, mask)
        return _kl(clean, _last_logprobs(model, steered, lengths))

    def kl_at(alphas):
        return jax.lax.map(lambda args: kl_of(*args), (cfg_features, alphas), batch_size=config_chunk)

    if search == "integer":
        alpha, kl, reached, it = _integer_search(kl_at, target)
    else:
        alpha, kl, reached, it = _bisection(kl_at, target, alpha0, max_alpha, max_iter, rtol)
    shape = (n_f, n_t)
    return Calibration(alpha.reshape(shape), kl.reshape(shape), reached.reshape(shape), it)


def _steered_changes(
    model,
    dictionary,
    tokens,
    mask,
    feature,
    alpha,
    key,
    steps: int,
    temperature: float,
    error_term: bool,
    unsteered,
    per_prefix: bool = False,
):
    """Sum over `steps` steps of the prefix-mean rank-percentile change, sampling from the steered
    model (greedy at `temperature` 0). The steering keeps the error term and skips the prefix
    positions marked in `unsteered`; the clean distribution is taken on the same, steered,
    context, with the error term dropped when `error_term` is False. `per_prefix`: one sum per
    prefix (`[P, vocab]`) instead of their mean. Also returns the prefixes with their generated
    tokens (`[P, S + steps - 1]`)."""
    n_prefixes, width = tokens.shape
    extend = lambda a, fill: (
        jnp.concatenate([a, jnp.full((n_prefixes, steps - 1), fill, a.dtype)], axis=1) if steps > 1 else a
    )
    tokens, mask, steer = extend(tokens, 0), extend(mask, False), ~extend(unsteered, False)
    rows = jnp.arange(n_prefixes)

    def step(carry, key_t):
        tokens, mask, lengths, total = carry
        site = splice_point(model, dictionary, tokens, mask)
        clean_site = site if error_term else splice_point(model, dictionary, tokens, mask, error_term=False)
        clean = _last_logprobs(model, run_from(model, clean_site.h, mask, clean_site.point), lengths)
        steered = _last_logprobs(
            model, set_feature(model, dictionary, site, mask, feature, alpha, where=steer), lengths
        )
        change = rank_percentiles(steered) - rank_percentiles(clean)
        total = total + (change if per_prefix else jnp.mean(change, axis=0))
        if steps > 1:
            if temperature > 0:
                sampled = jax.random.categorical(key_t, steered / temperature, axis=-1).astype(tokens.dtype)
            else:
                sampled = jnp.argmax(steered, axis=-1).astype(tokens.dtype)
            room = lengths < tokens.shape[1]
            at = jnp.minimum(lengths, tokens.shape[1] - 1)
            tokens = tokens.at[rows, at].set(jnp.where(room, sampled, tokens[rows, at]))
            mask = mask.at[rows, at].set(mask[rows, at] | room)
            lengths = lengths + room
        return (tokens, mask, lengths, total), None

    shape = (n_prefixes, model.config.vocab_size) if per_prefix else (model.config.vocab_size,)
    init = (tokens, mask, mask.sum(1), jnp.zeros(shape, jnp.float32))
    (tokens, _, _, total), _ = jax.lax.scan(step, init, jax.random.split(key, steps))
    return total, tokens


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
    error_term: bool = True,
    use: Bool[Array, " T"] | None = None,
    unsteered: Bool[Array, "P S"] | None = None,
) -> Float[Array, "F vocab"]:
    """Mean change in rank percentile of every token (see the module docstring), averaged over
    the alphas of the targets marked in `use` (all by default; the authors build `S` from the
    positive KL targets only). `temperature` 0 decodes greedily. `unsteered`: prefix positions
    left unsteered (the authors' generation skips prefix tokens equal to the tokenizer's pad id,
    which is GPT-2's BOS)."""
    n_f, n_t = alphas.shape
    steps = max(1, generate_tokens)
    keys = jax.random.split(key, n_f * n_t)
    unsteered = jnp.zeros(tokens.shape, bool) if unsteered is None else unsteered

    def one(args):
        feature, alpha, k = args
        return _steered_changes(
            model, dictionary, tokens, mask, feature, alpha, k, steps, temperature, error_term, unsteered
        )[0]

    totals = jax.lax.map(one, (jnp.repeat(features, n_t), alphas.reshape(-1), keys), batch_size=config_chunk)
    weights = jnp.ones(n_t, jnp.float32) if use is None else use.astype(jnp.float32)
    return jnp.einsum("ftv,t->fv", totals.reshape(n_f, n_t, -1), weights) / (weights.sum() * steps)


@eqx.filter_jit
def rank_changes_resampled(
    model: Transformer,
    dictionary: Dictionary,
    tokens: Int[Array, "P S"],
    mask: Bool[Array, "P S"],
    features: Int[Array, " F"],
    alphas: Float[Array, "F T"],
    key,
    resamples: Float[Array, "B P"],
    top_s: int,
    *,
    generate_tokens: int = 0,
    temperature: float = 0.75,
    config_chunk: int = 8,
    error_term: bool = True,
    use: Bool[Array, " T"] | None = None,
    unsteered: Bool[Array, "P S"] | None = None,
) -> tuple[Float[Array, "F vocab"], Int[Array, "F B s"]]:
    """`rank_changes` (the same keys, so the same samples and the same mean change), and for each
    row of `resamples` (weights over the prefixes summing to 1, e.g. a bootstrap draw's counts
    over P) the `top_s` tokens of the change averaged with those weights: the promoted set `S`
    of every resample, from which `output_score.output_score_intervals` gives an interval of
    O(T) over prefixes and their sampled continuations."""
    n_f, n_t = alphas.shape
    steps = max(1, generate_tokens)
    keys = jax.random.split(key, n_f * n_t).reshape(n_f, n_t)
    unsteered = jnp.zeros(tokens.shape, bool) if unsteered is None else unsteered
    weights = jnp.ones(n_t, jnp.float32) if use is None else use.astype(jnp.float32)

    def one(args):
        feature, feature_alphas, feature_keys = args
        per_target = jax.vmap(
            lambda alpha, k: _steered_changes(
                model, dictionary, tokens, mask, feature, alpha, k, steps, temperature, error_term, unsteered, True
            )[0]
        )(feature_alphas, feature_keys)
        per_prefix = jnp.einsum("tpv,t->pv", per_target, weights) / (weights.sum() * steps)
        return per_prefix.mean(0), jax.lax.top_k(resamples @ per_prefix, top_s)[1]

    return jax.lax.map(one, (features, alphas, keys), batch_size=max(1, config_chunk // n_t))


@eqx.filter_jit
def steered_generations(
    model: Transformer,
    dictionary: Dictionary,
    tokens: Int[Array, "P S"],
    mask: Bool[Array, "P S"],
    features: Int[Array, " F"],
    alphas: Float[Array, "F T"],
    key,
    *,
    generate_tokens: int = 20,
    temperature: float = 0.75,
    config_chunk: int = 8,
    unsteered: Bool[Array, "P S"] | None = None,
) -> Int[Array, "F T P L"]:
    """The prefixes continued by `generate_tokens` tokens sampled (greedy at `temperature` 0)
    from the model steered as in `rank_changes`, for every feature at each of its alphas: what
    steering does, to show beside the value-side tokens (the paper's Fig. 4). Each prefix's
    generated tokens start at its own length (`mask.sum(1)`); the row is `L = S + steps - 1`
    long, and the slots after the last generated token hold 0. `unsteered`: as in `rank_changes`."""
    n_f, n_t = alphas.shape
    steps = max(2, generate_tokens + 1)  # the scan appends one token after every step but the last
    unsteered = jnp.zeros(tokens.shape, bool) if unsteered is None else unsteered

    def one(args):
        feature, alpha, k = args
        return _steered_changes(
            model, dictionary, tokens, mask, feature, alpha, k, steps, temperature, True, unsteered
        )[1]

    keys = jax.random.split(key, n_f * n_t)
    out = jax.lax.map(one, (jnp.repeat(features, n_t), alphas.reshape(-1), keys), batch_size=config_chunk)
    return out.reshape(n_f, n_t, *out.shape[1:])
