"""The output score O(T) (docs/definitions.md section 5).

For each feature: calibrate the clamp values alpha at which the mean next-token
`KL(clean || steered)` over the neutral prefixes is 0.25 and 0.5; take each vocabulary token's
change in rank percentile, averaged over prefixes and the alphas of the positive targets;
`S` = the `top_s` tokens most promoted (`evaluate` takes |S| = |T|, as the paper).
`O(T) = |S ∩ T| / |S|`.

With sampled continuations (`generate_tokens > 0`, `temperature > 0`) O(T) is random. With
`resamples = B > 0`, the prefixes are drawn B times with replacement (numpy, seeded by `seed`),
each draw's `S` is built from the same steered continuations averaged over the drawn prefixes,
and `output_score_intervals` gives the 2.5 and 97.5 percentiles of O(T) over the draws: a
percentile bootstrap over prefixes, which covers both the choice of prefixes and the sampling of
their continuations.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from qlens_jax.evaluation.matching import STRING_MATCHES, comparison_keys, membership
from qlens_jax.evaluation.steering import calibrate_alphas, rank_changes, rank_changes_resampled
from qlens_jax.models import Transformer


@dataclass
class Promoted:
    """The steering result of one dictionary's features (numpy).

    `promoted[f]`: the `top_s` token ids whose rank percentile rose most when steering
    `features[f]`, with their mean changes `change[f]`; `alphas[f, t]` / `kl[f, t]` / `reached[f, t]`:
    the calibrated clamp value for KL target `targets[t]`, its KL, and whether it is within tolerance.
    """

    features: np.ndarray
    targets: np.ndarray
    alphas: np.ndarray
    kl: np.ndarray
    reached: np.ndarray
    promoted: np.ndarray
    change: np.ndarray
    resampled: np.ndarray | None = None  # [F, B, top_s]: S of each bootstrap draw of the prefixes

    def take(self, rows: np.ndarray) -> "Promoted":
        """The features at `rows`."""
        return Promoted(
            self.features[rows],
            self.targets,
            *(a[rows] for a in (self.alphas, self.kl, self.reached, self.promoted, self.change)),
            None if self.resampled is None else self.resampled[rows],
        )


def promoted_tokens(
    model: Transformer,
    dictionary,
    features,
    prefix_tokens: np.ndarray,
    prefix_mask: np.ndarray,
    *,
    targets=(0.25, 0.5),
    top_s: int = 25,
    generate_tokens: int = 0,
    temperature: float = 0.75,
    seed: int = 0,
    feature_chunk: int = 64,
    config_chunk: int = 8,
    max_iter: int = 64,
    rtol: float = 0.02,
    kl_positions: str = "last",
    alpha_search: str = "bisection",
    error_term: bool = True,
    resamples: int = 0,
) -> Promoted:
    """Steer every feature in `features` after each prefix; see the module docstring.

    `kl_positions`, `alpha_search`, `error_term`: how alpha is calibrated and which run is clean
    (`steering.calibrate_alphas`). Negative `targets` steer the other way (a negative alpha);
    they are calibrated and reported, and `S` is built from the positive targets only, as the
    authors build it. `resamples`: bootstrap draws of the prefixes for an interval of O(T)
    (see the module docstring; only when continuations are sampled)."""
    from qlens_jax.dictionaries import refuse_cross_layer

    refuse_cross_layer(dictionary, "steering (the output score)")
    features = np.asarray(features, np.int32)
    weights = None  # with sampled continuations and resamples: each bootstrap draw's weights over the prefixes
    if resamples > 0 and generate_tokens > 0 and temperature > 0:
        draws = np.random.default_rng(seed).integers(0, len(prefix_tokens), (resamples, len(prefix_tokens)))
        weights = jnp.asarray(
            np.stack([np.bincount(d, minlength=len(prefix_tokens)) for d in draws]) / len(prefix_tokens), jnp.float32
        )
    tokens, mask = jnp.asarray(prefix_tokens, jnp.int32), jnp.asarray(prefix_mask, bool)
    targets_array = jnp.asarray(np.asarray(targets, np.float32))
    use = targets_array > 0
    key = jax.random.key(seed)
    parts = []
    for start in range(0, len(features), feature_chunk):
        chunk = jnp.asarray(features[start : start + feature_chunk])
        calibration = calibrate_alphas(
            model,
            dictionary,
            tokens,
            mask,
            chunk,
            targets_array,
            max_iter=max_iter,
            rtol=rtol,
            config_chunk=config_chunk,
            kl_positions=kl_positions,
            search=alpha_search,
            error_term=error_term,
        )
        steering = dict(
            generate_tokens=generate_tokens,
            temperature=temperature,
            config_chunk=config_chunk,
            error_term=error_term,
            use=use,
        )
        chunk_key = jax.random.fold_in(key, start)
        if weights is not None:
            changes, resampled = rank_changes_resampled(
                model, dictionary, tokens, mask, chunk, calibration.alphas, chunk_key, weights, top_s, **steering
            )
        else:
            changes = rank_changes(model, dictionary, tokens, mask, chunk, calibration.alphas, chunk_key, **steering)
            resampled = np.zeros((len(chunk), 0, top_s), np.int32)
        top_change, top_ids = jax.lax.top_k(changes, top_s)
        parts.append((calibration.alphas, calibration.kl, calibration.reached, top_ids, top_change, resampled))
    cat = lambda i: np.concatenate([np.asarray(p[i]) for p in parts]) if parts else np.zeros((0,))
    return Promoted(
        features,
        np.asarray(targets, np.float32),
        *(cat(i) for i in range(5)),
        cat(5) if weights is not None else None,
    )


def output_scores(
    promoted: Promoted, token_sets: ArrayLike, *, match: str = "ids", vocab: np.ndarray | None = None
) -> np.ndarray:
    """`O(T) = |S ∩ T| / |S|` per feature (`token_sets[f]`: the lens's top-k for `promoted.features[f]`)."""
    token_sets = np.asarray(token_sets)
    if token_sets.shape[0] != len(promoted.features):
        raise ValueError(f"{token_sets.shape[0]} token sets for {len(promoted.features)} features")
    s_keys = comparison_keys(promoted.promoted, match, vocab)
    if match in STRING_MATCHES:  # |S| counts distinct normalized strings
        out = np.empty(len(s_keys))
        t_keys = comparison_keys(token_sets, match, vocab)
        for f in range(len(s_keys)):
            s = set(s_keys[f].tolist())
            out[f] = len(s & set(t_keys[f].tolist())) / len(s)
        return out
    return membership(s_keys, comparison_keys(token_sets, match, vocab)).mean(1)


def output_score_intervals(
    promoted: Promoted,
    token_sets: ArrayLike,
    *,
    match: str = "ids",
    vocab: np.ndarray | None = None,
    level: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Per feature, the `level` percentile interval of O(T) over the bootstrap draws of
    `promoted.resampled` (NaN without draws)."""
    n = len(promoted.features)
    if promoted.resampled is None or promoted.resampled.shape[1] == 0:
        return np.full(n, np.nan), np.full(n, np.nan)
    scores = np.stack(
        [
            output_scores(
                Promoted(
                    promoted.features,
                    promoted.targets,
                    promoted.alphas,
                    promoted.kl,
                    promoted.reached,
                    promoted.resampled[:, b],
                    promoted.change,
                ),
                token_sets,
                match=match,
                vocab=vocab,
            )
            for b in range(promoted.resampled.shape[1])
        ],
        axis=1,
    )
    tail = 100 * (1 - level) / 2
    return np.percentile(scores, tail, axis=1), np.percentile(scores, 100 - tail, axis=1)
