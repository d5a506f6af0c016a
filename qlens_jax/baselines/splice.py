"""A dictionary spliced into the forward pass, and the model run on from where it writes.

The secant baselines (zero-out, token change) and the output score's steering all do the
same thing (DESIGN.md sections 1 and 5): at the dictionary's site, replace the model's value
by the dictionary's output computed from *modified* activations plus the error term,

    out' = decode(a', x) + skip(x) + (out - reconstruct(x)),

where `x` is what the dictionary reads, `out` what the model has where it writes (the
residual itself for an SAE, the MLP output for a transcoder) and `a'` the activations with one
feature's post-activation replaced. With `a' = a` this is the clean run. Every supported
`decode` is affine in the activations for a fixed `x` (a linear map, a per-feature decoder-norm
rescale, and a per-token de-normalization that depends on `x` only), so

    out' - out = decode(a'_i e_i, x) - decode(a_i e_i, x) = one.decode(a'_i - a_i, x) - one.decode(0, x)

with `one` the dictionary cut down to feature `i` (`single_feature`). That is what
`feature_change` computes: one row of the decoder per position instead of a `d_sae`-wide
activation vector per position and feature. `tests/baselines` checks it against the literal
splice with the full activation vector.

The change is added at the dictionary's write point (a residual `qlens_jax.lens.points.Point`)
and the model is run from there to the final residual (`qlens_jax.lens.transport.run_from`,
the forward pass the lens kernel linearizes).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from qlens_jax.dictionaries import Dictionary
from qlens_jax.lens.points import Point, dictionary_points, row
from qlens_jax.lens.transport import run_from
from qlens_jax.models import Residuals, Transformer

# Array fields of `Dictionary` and the axis along which they index features (None: shared).
_FEATURE_AXIS = {
    "W_enc": 1, "b_enc": 0, "W_dec": 0, "threshold": 0, "b_mag": 0, "r_mag": 0, "log_sparsity": 0,
    "b_dec": None, "W_skip": None, "input_scale": None,
}


def _array_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(Dictionary) if not f.metadata.get("static", False)]


def single_feature(dictionary: Dictionary, feature: Int[Array, ""]) -> Dictionary:
    """`dictionary` cut down to feature `feature` (`d_sae = 1`); `feature` may be traced.

    Only for `decode` (an activation function's `k` no longer fits one feature). Refuses a
    `Dictionary` with an array field it does not know how to slice rather than guess.
    """
    unknown = sorted(set(_array_fields()) - set(_FEATURE_AXIS))
    if unknown:
        raise TypeError(f"single_feature does not know the feature axis of Dictionary fields {unknown}")
    names = [n for n, axis in _FEATURE_AXIS.items() if axis is not None and getattr(dictionary, n) is not None]
    sliced = [jax.lax.dynamic_slice_in_dim(getattr(dictionary, n), feature, 1, _FEATURE_AXIS[n]) for n in names]
    return eqx.tree_at(lambda d: [getattr(d, n) for n in names], dictionary, sliced)


def feature_change(
    dictionary: Dictionary,
    x: Float[Array, "*batch d_in"],
    feature: Int[Array, ""],
    change: Float[Array, "*batch"],
) -> Float[Array, "*batch d_out"]:
    """`decode(a + change e_feature, x) - decode(a, x)`: what the splice adds where it writes."""
    one = single_feature(dictionary, feature)
    change = change.astype(jnp.float32)[..., None]
    return one.decode(change, x) - one.decode(jnp.zeros_like(change), x)


# ---- where a dictionary sits ------------------------------------------------------------------
def write_point(dictionary: Dictionary, n_layers: int) -> int:
    """The row (`points.row`, the tuned lens's numbering) of the residual point the
    dictionary's output is added to."""
    return row(dictionary_points(dictionary.site_in, dictionary.site_out, dictionary.layer, n_layers).write, n_layers)


def site_input(dictionary: Dictionary, residuals: Residuals) -> Float[Array, "b s d"]:
    """What the dictionary reads, from `run_with_residuals`' points (`[layers, b, s, d]`)."""
    return point_value(residuals, Point(dictionary.site_in, dictionary.layer))


def point_value(residuals: Residuals, point: Point) -> Float[Array, "b s d"]:
    """The stream at `point` (a residual point or an MLP input) from `run_with_residuals`."""
    return getattr(residuals, point.site)[point.layer]


@dataclasses.dataclass(frozen=True)
class SplicePoint:
    """A dictionary's spliced site on one token batch: its input, activations and write point."""

    x: jax.Array  # [b, s, d_in] what the dictionary reads
    h: jax.Array  # [b, s, d] the residual stream at the write point
    acts: jax.Array  # [b, s, d_sae] clean post-activations
    point: Point


def splice_point(model: Transformer, dictionary: Dictionary, tokens, mask) -> SplicePoint:
    """Run the clean model on a batch and read the dictionary's site (traceable)."""
    _, residuals = model.run_with_residuals(tokens, mask)
    x = site_input(dictionary, residuals)
    point = dictionary_points(dictionary.site_in, dictionary.site_out, dictionary.layer, model.config.n_layers).write
    return SplicePoint(x=x, h=point_value(residuals, point), acts=dictionary.encode(x), point=point)


def set_feature(
    model: Transformer,
    dictionary: Dictionary,
    site: SplicePoint,
    mask: Bool[Array, "b s"],
    feature: Int[Array, ""],
    value: Float[Array, ""],
) -> Float[Array, "b s d"]:
    """Final residual with `feature`'s post-activation set to `value` at every valid position
    (reconstruction error kept, so everything else is as in the clean run)."""
    change = (value - site.acts[..., feature]) * mask
    delta = feature_change(dictionary, site.x, feature, change)
    return run_from(model, site.h + delta.astype(site.h.dtype), mask, site.point)
