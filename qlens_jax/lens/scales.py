"""Weights too large for the readout, refused before any work (the foreseeable overflows).

Every readout sums `width` products in float32 (the precision's inputs, bfloat16 under
the bfloat16 policy, have the same range): the final norm's statistics and the first-order
energies sum squares of a transported vector's entries, the readouts sum its products with
`W_U` / `W_E` rows. A feature whose vector holds entries up to `w` in absolute value stays
finite where `width * w * max(w, r) * HEADROOM` is below the largest finite number, `r` being
the largest entry of the readout matrix (`W_U` for the value side; the key side's centered,
unit-norm embedding rows or, for Logit Lens, `W_E`) and `HEADROOM` the gain left to the
transport operators, which are not known yet. Anything that still overflows is caught after
the readout (`qlens_jax.readout.finite`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from qlens_jax.dictionaries import DictionaryError
from qlens_jax.lens.signatures import lens_side
from qlens_jax.models import Transformer

HEADROOM = 2.0**20
MATRICES = {
    "value": ("W_dec", "row", 1),
    "key": ("W_enc", "column", 0),
}  # side -> (weight, its feature axis, reduced axis)


@partial(jax.jit, static_argnums=1)
def _abs_max(matrix: jax.Array, axis: int | None) -> jax.Array:
    """`max |matrix|` along `axis` (all of it for None), in float32, as one fused reduction."""
    return jnp.max(jnp.abs(matrix), axis=axis).astype(jnp.float32)


def largest_finite(dtype: str, precision: str) -> float:
    """The largest number the readout's arithmetic holds: float32's, or bfloat16's where the
    weights or the products are bfloat16."""
    narrow = "bfloat16" in (dtype, precision)
    return float(jnp.finfo(jnp.bfloat16 if narrow else jnp.float32).max)


def check_weight_scales(model: Transformer, requests, lenses: tuple[str, ...], dtype: str, precision: str) -> None:
    """Refuse a requested feature whose value vector (`W_dec` row) or key vector (`W_enc`
    column), for the sides `lenses` read, is large enough to overflow the readout (module
    docstring), naming the dictionary, the feature, its row or column and the lens."""
    limit = largest_finite(dtype, precision)
    first_lens = {}
    for lens in lenses:
        first_lens.setdefault(lens_side(lens), lens)
    readout = {}
    for side, lens in first_lens.items():
        readout[side] = (
            float(_abs_max(model.W_U, None)) if side == "value" else max(1.0, float(_abs_max(model.W_E, None)))
        )
        name, axis_name, reduced = MATRICES[side]
        for request in requests:
            d = request.dictionary
            matrix = getattr(d, name)
            width = matrix.shape[reduced]
            w = np.asarray(_abs_max(matrix, reduced), np.float64)[request.features]
            peak = width * w * np.maximum(w, readout[side]) * HEADROOM
            bad = np.flatnonzero(peak > limit)
            if bad.size:
                feature = int(request.features[bad[0]])
                raise DictionaryError(
                    f"dictionary {d.name!r} (layer {d.layer}): feature {feature}'s {name} {axis_name} holds values up to "
                    f"{w[bad[0]]:.3g} in absolute value; {lens} sums {width} products of them with themselves and with "
                    f"entries up to {readout[side]:.3g}, which overflows the largest finite number of its arithmetic "
                    f"({limit:.3g}, keeping a margin of {HEADROOM:.0f} for the transport); check the dictionary's weights"
                )
