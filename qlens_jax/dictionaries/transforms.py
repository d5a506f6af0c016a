"""Explicit, named weight transformations of a `Dictionary` (never applied silently)."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp

from .dictionary import Dictionary
from .errors import DictionaryError


def fold_input_scale(d: Dictionary) -> Dictionary:
    """Fold a constant input scale `s` into the weights, as sae_lens's
    `fold_activation_norm_scaling_factor` does: `W_enc *= s`, `W_dec /= s`, `b_dec /= s`.

    The reconstruction is unchanged; key vectors grow by `s` and value vectors shrink by `s`
    (the encoder then reads raw activations). Dtypes are kept.
    """
    if d.input_norm != "scale":
        raise DictionaryError(f"dictionary {d.name!r} has no constant input scale to fold")
    s = d.input_scale.astype(jnp.float32)

    def scaled(a, factor):
        return (a.astype(jnp.float32) * factor).astype(a.dtype)

    return dataclasses.replace(
        d,
        W_enc=scaled(d.W_enc, s),
        W_dec=scaled(d.W_dec, 1 / s),
        b_dec=scaled(d.b_dec, 1 / s),
        input_scale=None,
        input_norm="none",
    )


def astype(d: Dictionary, dtype) -> Dictionary:
    """Cast every floating parameter of `d` to `dtype` (static metadata unchanged)."""
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, d)
