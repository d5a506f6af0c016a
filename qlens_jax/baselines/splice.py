"""A dictionary spliced into the forward pass, and the model run on from where it writes.

The secant baselines (zero-out, token change) and the output score's steering all do the
same thing (docs/definitions.md sections 1 and 5): at the dictionary's site, replace the model's value
by the dictionary's output computed from *modified* activations plus the error term,

    out' = decode(a', x) + skip(x) + (out - reconstruct(x)),

where `x` is what the dictionary reads, `out` what the model has where it writes (the
site's value for an SAE, the MLP output for a transcoder) and `a'` the activations with one
feature's post-activation replaced. With `a' = a` this is the clean run. Every supported
`decode` is affine in the activations for a fixed `x` (a linear map, a per-feature decoder-norm
rescale, and a per-token de-normalization that depends on `x` only), so

    out' - out = decode(a'_i e_i, x) - decode(a_i e_i, x) = one.decode(a'_i - a_i, x) - one.decode(0, x)

with `one` the dictionary cut down to feature `i` (`single_feature`). That is what
`feature_change` computes: one row of the decoder per position instead of a `d_sae`-wide
activation vector per position and feature. `tests/baselines` checks it against the literal
splice with the full activation vector.

The site decides how the change enters the residual stream (`SplicePoint.spliced`). Residual
SAEs and transcoders write a residual point or an MLP output, and SAEs on `attn_out[L]` and
`mlp_out[L]` a module output that is added straight to the residual (after any post-norm):
for all of these the change is added to the residual point the output goes into
(`dictionary_points(...).write`). An SAE on `z[L]`, the heads' outputs before the output
projection, changes `z`, which then passes the output projection and any post-norm (not linear
for Gemma-3): `resid_mid[L]' = resid_pre[L] + attention_output(block L, z + change)` (in a
parallel block `resid_post[L]' = resid_pre[L] + mlp_out[L] + attention_output(...)`). Either way
the model is then run from that residual point to the final residual
(`qlens_jax.lens.transport.run_from`, the forward pass the lens kernel linearizes).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from qlens_jax.dictionaries import Dictionary
from qlens_jax.lens.points import RESIDUAL_SITES, Point, dictionary_points, flows_into, residual_point, row
from qlens_jax.lens.transport import run_from
from qlens_jax.lens.validation import LensRequestError
from qlens_jax.models import Block, Residuals, Transformer, attention_output

# Array fields of `Dictionary` and the axis along which they index features (None: shared).
_FEATURE_AXIS = {
    "W_enc": 1,
    "b_enc": 0,
    "W_dec": 0,
    "threshold": 0,
    "b_mag": 0,
    "r_mag": 0,
    "log_sparsity": 0,
    "W_gate": 1,
    "b_gate": 0,
    "b_dec": None,
    "W_skip": None,
    "input_scale": None,
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
def write_point(dictionary: Dictionary, n_layers: int, parallel: bool = False) -> int:
    """The row (`points.row`, the tuned lens's numbering) of the residual point the
    dictionary's output is added to (`parallel`: the model's blocks are parallel). A `z`
    dictionary's output is not added to the residual (it passes the output projection first):
    refused with a `LensRequestError`."""
    write = dictionary_points(
        dictionary.site_in, dictionary.site_out, dictionary.layer, n_layers, parallel=parallel
    ).write
    if write.site not in RESIDUAL_SITES:
        raise LensRequestError(
            f"dictionary {dictionary.name!r} (layer {dictionary.layer}) writes at {write}, the heads' outputs before the "
            "attention output projection: its output is not added to a residual point, so it has no residual write point "
            "(the tuned-lens baselines are not defined for it)"
        )
    return row(write, n_layers)


def site_input(dictionary: Dictionary, residuals: Residuals) -> Float[Array, "b s d_in"]:
    """What the dictionary reads, from `run_with_residuals`' points."""
    return point_value(residuals, Point(dictionary.site_in, dictionary.layer))


def point_value(residuals: Residuals, point: Point) -> Float[Array, "b s d"]:
    """The tensor at `point` (a residual point, an MLP input or a module output) from
    `run_with_residuals`; `z` with its heads concatenated (`[b, s, n_heads * head_dim]`, the
    order of TransformerLens's `hook_z` flattened)."""
    value = getattr(residuals, point.site)[point.layer]
    return value.reshape(*value.shape[:2], -1) if point.site == "z" else value


@dataclasses.dataclass(frozen=True)
class SplicePoint:
    """A dictionary's spliced site on one token batch: its input, activations, and how a change
    of its output reaches the residual point `point` the model runs on from.

    `block` and `before` are set for a dictionary on `z` only: the change passes that block's
    output projection and post-norm and is added to `before` (the block's `resid_pre`)."""

    x: jax.Array  # [b, s, d_in] what the dictionary reads
    h: jax.Array  # [b, s, d] the residual stream at `point` (clean, or with the error term dropped)
    acts: jax.Array  # [b, s, d_sae] clean post-activations
    point: Point  # a residual point
    block: Block | None = None
    before: jax.Array | None = None  # [b, s, d]
    z_offset: jax.Array | None = None  # [b, s, q] added to `z` with the error term dropped

    def spliced(self, change: Float[Array, "b s d_out"]) -> Float[Array, "b s d"]:
        """The residual stream at `point` when `change` is added to the dictionary's output site."""
        if self.block is None:
            return self.h + change.astype(self.h.dtype)
        z = self.x if self.z_offset is None else self.x + self.z_offset
        return self.before + attention_output(self.block, z + change.astype(self.x.dtype))


def splice_point(model: Transformer, dictionary: Dictionary, tokens, mask, error_term: bool = True) -> SplicePoint:
    """Run the clean model on a batch and read the dictionary's site (traceable).

    With `error_term=False` the dictionary's reconstruction replaces the model's value where it
    writes (`out - reconstruct(x)` dropped, sae_lens's default splice, as the authors' calibration
    runs): `h` is then the residual stream of that spliced run, and so is everything built on it."""
    _, residuals = model.run_with_residuals(tokens, mask)
    x = site_input(dictionary, residuals)
    n_layers, parallel = model.config.n_layers, model.config.parallel_residual
    write = dictionary_points(
        dictionary.site_in, dictionary.site_out, dictionary.layer, n_layers, parallel=parallel
    ).write
    point = flows_into(write, n_layers)
    through = {}
    if write.site == "z":
        before = residuals.resid_pre[dictionary.layer]
        if parallel:  # the attention output joins resid_pre and the MLP output at resid_post
            point = residual_point("resid_post", dictionary.layer, n_layers)
            before = before + residuals.mlp_out[dictionary.layer]
        through = dict(block=model.block(dictionary.layer)[0], before=before)
    elif write.site not in RESIDUAL_SITES:
        raise ValueError(f"dictionary {dictionary.name!r}: cannot splice at write point {write}")
    site = SplicePoint(x=x, h=point_value(residuals, point), acts=dictionary.encode(x), point=point, **through)
    if error_term:
        return site
    out = point_value(residuals, Point(dictionary.site_out, dictionary.layer))
    error = out.astype(jnp.float32) - dictionary.reconstruct(x).astype(jnp.float32)
    if site.block is None:
        return dataclasses.replace(site, h=site.h - error.astype(site.h.dtype))
    return dataclasses.replace(site, h=site.spliced(-error), z_offset=-error.astype(x.dtype))


def set_feature(
    model: Transformer,
    dictionary: Dictionary,
    site: SplicePoint,
    mask: Bool[Array, "b s"],
    feature: Int[Array, ""],
    value: Float[Array, ""],
    where: Bool[Array, "b s"] | None = None,
) -> Float[Array, "b s d"]:
    """Final residual with `feature`'s post-activation set to `value` at every valid position
    (or only where `where` is also true), reconstruction error kept, so everything else is as in
    the clean run."""
    change = (value - site.acts[..., feature]) * (mask if where is None else mask & where)
    delta = feature_change(dictionary, site.x, feature, change)
    return run_from(model, site.spliced(delta), mask, site.point)
