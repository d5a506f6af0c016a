"""Input normalization conventions of real SAEs, as pure functions.

A dictionary may see a transformed input `x_n = (x - shift) * in_scale` and undo it on its
output `y = y_n * out_scale + shift`. The statistics are per token (last axis) or a stored
constant:

- `"none"`: identity.
- `"scale"`: a constant `s` (sae_lens `expected_average_only_in`, whose factor is stored in the
  release registry, not in the file, or one estimated with `estimate_input_scale`):
  `x_n = x * s`, `y = y_n / s`.
- `"constant_norm_rescale"` (sae_lens): `x_n = x * sqrt(d_in) / ||x||`, undone on output.
- `"layer_norm"` (sae_lens, OpenAI TopK SAEs): `x_n = (x - mean) / (std + 1e-5)` with the
  unbiased std (torch's default), undone as `y_n * std + mean` (no epsilon, as both owners do).

Statistics are computed in float32.
"""

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from .errors import DictionaryError

INPUT_NORMS = ("none", "scale", "constant_norm_rescale", "layer_norm")
LAYER_NORM_EPS = 1e-5

Stats = tuple[Float[Array, "*batch 1"], Float[Array, "*batch 1"], Float[Array, "*batch 1"]]
"""(shift, in_scale, out_scale), each broadcastable against `[..., d]`."""


def input_stats(x: Float[Array, "*batch d"], kind: str, scale: Float[Array, ""] | None = None) -> Stats:
    """The per-token (shift, in_scale, out_scale) of normalization `kind` for input `x`."""
    xf = x.astype(jnp.float32)
    ones = jnp.ones(xf.shape[:-1] + (1,), jnp.float32)
    if kind == "none":
        return 0.0 * ones, ones, ones
    if kind == "scale":
        if scale is None:
            raise DictionaryError("normalization 'scale' needs a scale")
        s = jnp.asarray(scale, jnp.float32)
        return 0.0 * ones, s * ones, ones / s
    if kind == "constant_norm_rescale":
        coeff = jnp.sqrt(jnp.float32(xf.shape[-1])) / jnp.linalg.norm(xf, axis=-1, keepdims=True)
        return 0.0 * ones, coeff, 1.0 / coeff
    if kind == "layer_norm":
        mu = jnp.mean(xf, axis=-1, keepdims=True)
        std = jnp.std(xf - mu, axis=-1, keepdims=True, ddof=1)
        return mu, 1.0 / (std + LAYER_NORM_EPS), std
    raise DictionaryError(f"unknown input normalization {kind!r}; expected one of {INPUT_NORMS}")


def normalize(x: Float[Array, "*batch d"], stats: Stats) -> Float[Array, "*batch d"]:
    """Apply the input side of a normalization: `(x - shift) * in_scale`."""
    shift, in_scale, _ = stats
    return (x - shift) * in_scale


def denormalize(y: Float[Array, "*batch d"], stats: Stats) -> Float[Array, "*batch d"]:
    """Undo a normalization on the output side: `y * out_scale + shift`."""
    shift, _, out_scale = stats
    return y * out_scale + shift


def estimate_input_scale(acts: Float[ArrayLike, "n d"]) -> float:
    """Estimate an `expected_average_only_in` factor: `sqrt(d) / mean ||x||` over sample tokens.

    This is how sae_lens estimates the factor during training; use it when a release does
    not publish the factor it trained with (the result is then an estimate, not the original).
    """
    a = np.asarray(acts, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0:
        raise DictionaryError(f"expected activations shaped [n_tokens, d], got {a.shape}")
    return float(np.sqrt(a.shape[-1]) / np.linalg.norm(a, axis=-1).mean())
