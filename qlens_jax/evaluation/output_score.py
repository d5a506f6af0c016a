"""The output score O(T) (docs/definitions.md section 5).

For each feature: calibrate the clamp values alpha at which the mean next-token
`KL(clean || steered)` over the neutral prefixes is 0.25 and 0.5; take each vocabulary token's
change in rank percentile, averaged over prefixes and the alphas of the positive targets;
`S` = the `top_s` tokens most promoted (`evaluate` takes |S| = |T|, as the paper).
`O(T) = |S ∩ T| / |S|`.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from qlens_jax.evaluation.matching import STRING_MATCHES, comparison_keys, membership
from qlens_jax.evaluation.steering import calibrate_alphas, rank_changes
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
) -> Promoted:
    """Steer every feature in `features` after each prefix; see the module docstring.

    `kl_positions`, `alpha_search`, `error_term`: how alpha is calibrated and which run is clean
    (`steering.calibrate_alphas`). Negative `targets` steer the other way (a negative alpha);
    they are calibrated and reported, and `S` is built from the positive targets only, as the
    authors build it."""
    from qlens_jax.dictionaries import refuse_cross_layer

    refuse_cross_layer(dictionary, "steering (the output score)")
    features = np.asarray(features, np.int32)
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
        changes = rank_changes(
            model,
            dictionary,
            tokens,
            mask,
            chunk,
            calibration.alphas,
            jax.random.fold_in(key, start),
            generate_tokens=generate_tokens,
            temperature=temperature,
            config_chunk=config_chunk,
            error_term=error_term,
            use=use,
        )
        top_change, top_ids = jax.lax.top_k(changes, top_s)
        parts.append((calibration.alphas, calibration.kl, calibration.reached, top_ids, top_change))
    cat = lambda i: np.concatenate([np.asarray(p[i]) for p in parts]) if parts else np.zeros((0,))
    return Promoted(features, np.asarray(targets, np.float32), cat(0), cat(1), cat(2), cat(3), cat(4))


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
