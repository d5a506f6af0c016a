"""Placeholder until the precision module lands (replaced on merge)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def cast_model(model, dtype: str):
    """The model with floating-point parameters in `dtype` (metadata stays float32)."""
    target = DTYPES[dtype]
    meta = model.meta
    cast = jax.tree.map(lambda x: x.astype(target) if eqx.is_inexact_array(x) else x, model)
    return eqx.tree_at(lambda m: m.meta, cast, meta)


def check_precision(precision: str) -> None:
    pass
