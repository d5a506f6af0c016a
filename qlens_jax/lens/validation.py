"""Checks on a request that run before anything is compiled, each naming the bad input."""

from __future__ import annotations

import numpy as np

from qlens_jax.errors import InputError
from qlens_jax.models import Transformer


class LensRequestError(InputError):
    """A Query Lens request that cannot be served as asked."""


def check_tokens(model: Transformer, tokens, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """`tokens [batch, seq]` ids within the vocabulary; `mask` the same shape, right padding."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 2:
        raise LensRequestError(f"tokens must have shape [batch, seq], got {tokens.shape}")
    if not np.issubdtype(tokens.dtype, np.integer):
        raise LensRequestError(f"tokens must be integer ids, got dtype {tokens.dtype}")
    mask = np.ones(tokens.shape, bool) if mask is None else np.asarray(mask).astype(bool)
    if mask.shape != tokens.shape:
        raise LensRequestError(f"mask shape {mask.shape} does not match tokens shape {tokens.shape}")
    if tokens.size == 0 or not mask.any():
        raise LensRequestError("the token sample is empty (no valid positions)")
    valid = tokens[mask]
    vocab = model.config.vocab_size
    if valid.min() < 0 or valid.max() >= vocab:
        raise LensRequestError(f"token ids must lie in [0, {vocab}); got range [{valid.min()}, {valid.max()}]")
    if (np.diff(mask.astype(np.int8), axis=1) > 0).any():
        raise LensRequestError("mask must be right padding (valid positions first in every row)")
    if tokens.shape[1] > model.config.max_positions and model.config.positional == "learned":
        raise LensRequestError(
            f"sequences of length {tokens.shape[1]} exceed the model's {model.config.max_positions} positions"
        )
    return np.where(mask, tokens, 0).astype(np.int32), mask
