"""The value side of cross-layer transcoders (docs/definitions.md section 1c).

A feature of a `CrossLayerTranscoder` of layer `l` writes `d_{l->j}` into the MLP output of
every layer `j = l .. L-1`. Its Query Lens value is `sum_j M_{mlp_out[j]} d_{l->j}`, each
term transported from where it is written, then read out once; first order sums the
first-order transports the same way, and Logit Lens reads `sum_j d_{l->j}`. Its key side is
the encoder's, as for any transcoder, and needs nothing here.

Every transport is linear, so the sum is formed in the transported space, before the readout:
with the `W` decoder vectors of a feature side by side, `x = [d_{l->l}, ..., d_{l->L-1}]`
(`[W * d]`), the dense value is `x @ [M_l, ..., M_{L-1}]^T`, one operator `[d, W * d]` applied
as for any dictionary; first order likewise with per-block operators `[T, d, W * d]` (zero
blocks where a write layer is above the block). The readout (`LN_final` applied to the summed
vector as a function, then `W_U`) is not linear in its input, which is why the sum comes first
and the readout once: reading out each term and adding the scores would be another quantity.
The per-feature path transports each `d_{l->j}` from its own write point (one linearized pass
per feature and write layer) and sums the means.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from qlens_jax.dictionaries import CrossLayerTranscoder, is_cross_layer
from qlens_jax.lens import self_check
from qlens_jax.lens.first_order import first_order_terms_dense, first_order_terms_per_feature
from qlens_jax.lens.lens_spec import parse_lens
from qlens_jax.lens.means import per_feature_means
from qlens_jax.lens.operators import TransportOperators
from qlens_jax.lens.options import LensOptions
from qlens_jax.lens.points import DictionaryPoints, dictionary_points
from qlens_jax.lens.validation import LensRequestError
from qlens_jax.readout import FeatureRows, ReadoutContext

CROSS_LAYER_VALUE_LENSES = ("query_lens_value", "first_order_value", "logit_lens_value")


class CrossLayerRows(FeatureRows):
    """A cross-layer transcoder's decoder vectors of the features `index`, each feature's
    `W` vectors side by side as one row `[W * d]`, read on demand."""

    def __getitem__(self, selection) -> np.ndarray:
        block = super().__getitem__(selection)
        return block.reshape(len(block), -1)


def check_requests(requests, lenses: tuple[str, ...], options: LensOptions, n_layers: int) -> None:
    """Refuse, naming the dictionary, a cross-layer transcoder whose writes do not end at the
    model's last layer, the relative-variance statistic on its value side (it needs the
    per-position vectors of the summed transport, which neither path forms), and on its value
    side a lens other than the three presets or the authors' analysis options (the summed
    transport is implemented for the default linearization only)."""
    value_lenses = [lens for lens in lenses if parse_lens(lens).side == "value"]
    odd_lenses = [lens for lens in value_lenses if lens not in CROSS_LAYER_VALUE_LENSES]
    changed = options.analysis_changes()
    for r in requests:
        d = r.dictionary
        if not is_cross_layer(d):
            continue
        if d.layer + d.n_write != n_layers:
            raise LensRequestError(
                f"{r.describe()} is a cross-layer transcoder writing into layers {d.layer}..{d.layer + d.n_write - 1}, "
                f"but the model has {n_layers} layers"
            )
        if odd_lenses:
            raise LensRequestError(
                f"{odd_lenses[0]} is not available for the cross-layer transcoder {r.describe()}: its value side "
                f"is read by {', '.join(CROSS_LAYER_VALUE_LENSES)} only; load it per layer (cross_layer=False) for other lenses"
            )
        if changed and value_lenses:
            raise LensRequestError(
                f"{', '.join(f'{k}={v!r}' for k, v in changed.items())} is not available on the value side of the "
                f"cross-layer transcoder {r.describe()}; load it per layer (cross_layer=False) for the authors' options"
            )
        if options.stats and "query_lens_value" in lenses:
            raise LensRequestError(
                f"stats (relative variance) is not available for query_lens_value of the cross-layer transcoder "
                f"{r.describe()}; run it without stats, or load the transcoder per layer (cross_layer=False)"
            )


def write_points(dictionary: CrossLayerTranscoder, n_layers: int, parallel: bool) -> tuple[DictionaryPoints, ...]:
    """The points of each write layer `j` of `dictionary` (their `write` is where `d_{l->j}`
    is added to the residual), in order of `write_layers`."""
    return tuple(
        dictionary_points(dictionary.site_in, dictionary.site_out, j, n_layers, parallel=parallel)
        for j in dictionary.write_layers
    )


def decoder_rows(request) -> CrossLayerRows:
    """The requested features' decoder vectors, `[n, W * d]` (see `CrossLayerRows`)."""
    return CrossLayerRows(request.dictionary.cross_layer_decoders(), False, request.features)


def value_operator(
    operators: TransportOperators, points: tuple[DictionaryPoints, ...], n_layers: int, config
) -> Float[Array, "d wd"]:
    """`[M_l, ..., M_{L-1}]`: the value operators of the write points side by side, so that
    `x @ op.T` is the sum of the transported decoder vectors."""
    return jnp.concatenate([operators.operator("value", p.write, n_layers, config) for p in points], axis=1)


def logit_lens_operator(n_write: int, d_model: int) -> Float[Array, "d wd"]:
    """`[I, ..., I]`: `x @ op.T` is the plain sum of a feature's decoder vectors."""
    return jnp.tile(jnp.eye(d_model, dtype=jnp.float32), (1, n_write))


def first_order_operators(
    operators: TransportOperators, points: tuple[DictionaryPoints, ...], n_layers: int, mask_seed: bool
) -> tuple[list[int], Float[Array, "T d wd"]]:
    """Per-block first-order operators of the summed transport, `[T, d, W * d]`: term 0 the
    sum of the direct terms, then per block after the read layer the single hops of every
    decoder vector written below it (`first_order.first_order_terms_dense` of each write point,
    aligned by block)."""
    blocks, _ = first_order_terms_dense(operators, points[0], "value", n_layers, mask_seed)
    columns = []
    for p in points:
        own_blocks, terms = first_order_terms_dense(operators, p, "value", n_layers, mask_seed)
        zero = jnp.zeros_like(terms[0])
        aligned = [terms[0]] + [terms[1 + own_blocks.index(b)] if b in own_blocks else zero for b in blocks]
        columns.append(jnp.stack(aligned))
    return blocks, jnp.concatenate(columns, axis=2)


def per_feature_value(plan, decoders: np.ndarray, points: tuple[DictionaryPoints, ...], quiet: bool) -> jnp.ndarray:
    """Per-feature Query Lens value of decoder vectors `[n, W, d]`: the sum over write layers of
    the mean transported vector, each from its own write point (`[n, d]`)."""
    total = 0.0
    for w, p in enumerate(points):
        mean, _ = per_feature_means(plan, "value", decoders[:, w], p.write, quiet)
        total = total + mean
    return total  # pyright: ignore[reportReturnType]  (at least one write layer)


def per_feature_first_order(plan, decoders: np.ndarray, points: tuple[DictionaryPoints, ...]):
    """Per-feature first-order terms of decoder vectors `[n, W, d]`, summed over write layers and
    aligned by block: `(blocks, [n, T, d])`."""
    n_layers = plan.model.config.n_layers
    blocks, total = None, None
    for w, p in enumerate(points):
        own_blocks, terms = first_order_terms_per_feature(
            plan.model,
            plan.tokens,
            plan.mask,
            plan.chunks,
            "value",
            decoders[:, w],
            p,
            n_layers,
            plan.options.first_order_key_mask_seed,
        )
        if total is None:
            blocks, total = own_blocks, terms
            continue
        assert blocks is not None
        offset = 1 + blocks.index(own_blocks[0]) if own_blocks else total.shape[1]
        total = total.at[:, 0].add(terms[:, 0]).at[:, offset:].add(terms[:, 1:])
    assert blocks is not None and total is not None  # at least one write layer
    return blocks, total


def read_value(
    plan, request, lens: str, context: ReadoutContext, operators: TransportOperators | None, finite: Callable
) -> tuple[dict, dict]:
    """Signatures of `lens` (a value lens) for a cross-layer transcoder `request`: the readout's
    result and the table's extra columns; `finite` checks scores before any self-check."""
    config = plan.model.config
    n_layers = config.n_layers
    dictionary = request.dictionary
    points = write_points(dictionary, n_layers, config.parallel_residual)
    rows = decoder_rows(request)
    mask_seed = plan.options.first_order_key_mask_seed
    name = f"{lens} of {dictionary.name} (layer {dictionary.layer})"
    rtol = self_check.tolerance(plan.options.dtype, plan.options.precision)
    if lens == "logit_lens_value":
        return context.read("value", rows, op=logit_lens_operator(dictionary.n_write, config.d_model)), {}
    if lens == "query_lens_value":
        if plan.path != "dense":
            return context.read(
                "value", per_feature_value(plan, _decoders(rows, dictionary.n_write), points, plan.execution.quiet)
            ), {}
        assert operators is not None  # `check_operators` ran
        op = value_operator(operators, points, n_layers, config)
        result = finite(context.read("value", rows, op=op))
        if plan.execution.self_check:
            pick = self_check.self_check_indices(len(rows), plan.execution.self_check_features)
            sample = rows[pick]
            reference = per_feature_value(plan, _decoders(sample, dictionary.n_write), points, quiet=True)
            self_check.compare(sample @ np.asarray(op).T, reference, rtol, name)
        return result, {}
    if plan.path != "dense":
        blocks, terms = per_feature_first_order(plan, _decoders(rows, dictionary.n_write), points)
        result = context.read_first_order("value", terms, None)
    else:
        assert operators is not None  # `check_operators` ran
        blocks, terms_op = first_order_operators(operators, points, n_layers, mask_seed)
        result = finite(context.read_first_order("value", rows, terms_op))
        if plan.execution.self_check:
            pick = self_check.self_check_indices(len(rows), plan.execution.self_check_features)
            sample = rows[pick]
            _, reference = per_feature_first_order(plan, _decoders(sample, dictionary.n_write), points)
            dense = jnp.einsum("nd,tid->nti", sample, terms_op)
            self_check.compare(dense.sum(1), reference.sum(1), rtol, name)
    return result, {"layer_indices": np.asarray([dictionary.layer, *blocks])}


def _decoders(rows, n_write: int) -> np.ndarray:
    """`[n, W * d]` rows (or `CrossLayerRows`) as `[n, W, d]`."""
    flat = np.asarray(rows, np.float32)
    return flat.reshape(len(flat), n_write, -1)
