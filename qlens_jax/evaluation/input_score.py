"""The input score I(T) (docs/definitions.md section 5).

For a feature, `A` is the list (duplicates kept) of the tokens at the position of maximum
activation in each of its top active contexts (`contexts.top_contexts`); `I(T)` is the share of
`A` whose token is in the lens's token set `T`. A feature with fewer than `min_contexts` active
contexts gets no score (NaN): the paper asks for at least 20.

`input_scores_from_strings` is the authors' form, for contexts given as strings (their feature
pickles, `--activations`): the share of `A` whose string, normalized as their `normalize_token`,
is among the normalized strings of `T`; 0 when `A` is empty.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from qlens_jax.evaluation.contexts import TopContexts
from qlens_jax.evaluation.matching import comparison_keys, membership, normalize_token


def input_scores(
    top: TopContexts,
    token_sets: ArrayLike,
    *,
    min_contexts: int = 20,
    match: str = "ids",
    vocab: np.ndarray | None = None,
) -> np.ndarray:
    """`I(T)` per feature of `top` (`token_sets[f]`: the lens's top-k ids for `top.features[f]`)."""
    token_sets = np.asarray(token_sets)
    if token_sets.shape[0] != len(top.features):
        raise ValueError(f"{token_sets.shape[0]} token sets for {len(top.features)} features")
    active = top.active
    tokens = np.where(active, top.tokens, -1)
    hits = membership(comparison_keys(tokens, match, vocab), comparison_keys(token_sets, match, vocab)) & active
    n = active.sum(1)
    scores = hits.sum(1) / np.maximum(n, 1)
    return np.where(n >= min_contexts, scores, np.nan)


def input_scores_from_strings(activating: list[list[str]], token_sets: list[list[str]]) -> np.ndarray:
    """`I(T)` per feature from `activating[f]` (the tokens at the maxima of its contexts, duplicates
    kept) and `token_sets[f]` (the lens's top-k strings), as the authors' `calculate_overlap_ratio`."""
    if len(activating) != len(token_sets):
        raise ValueError(f"{len(token_sets)} token sets for {len(activating)} features")
    scores = np.zeros(len(activating))
    for f, (found, wanted) in enumerate(zip(activating, token_sets)):
        if found and wanted:
            members = {normalize_token(t) for t in wanted}
            scores[f] = sum(normalize_token(t) in members for t in found) / len(found)
    return scores
