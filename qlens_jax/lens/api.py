"""`query_lens`: signatures of every requested feature under every requested lens.

Three stages, each callable on its own (the main job, the benchmarks and the baselines do):
`plan_request` validates everything before any compilation and fixes how the request runs;
`transport_operators_for` computes the dense operators the plan's lenses need (docs/definitions.md
section 2; nothing for Logit Lens or the per-feature path); `read_signatures` reads out
top-k / bottom-k tokens in feature chunks and self-checks a few features of the dense path
against the per-feature path. `query_lens` is the one-call front doing all three.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from qlens_jax import memory, sharding
from qlens_jax.dictionaries import is_cross_layer
from qlens_jax.lens import cross_layer, self_check
from qlens_jax.lens.first_order import (
    first_order_terms_dense,
    first_order_terms_per_feature,
    first_order_value_means,
    hop_kind,
)
from qlens_jax.lens.lens_spec import Lens, parse_lens
from qlens_jax.lens.linearization import readout_model
from qlens_jax.lens.means import per_feature_means, relative_variance
from qlens_jax.lens.operators import TransportOperators, transport_operators
from qlens_jax.lens.options import ExecutionOptions, LensOptions, split_options
from qlens_jax.lens.plan import LensPlan, plan_request
from qlens_jax.lens.points import row
from qlens_jax.lens.signatures import DEFAULT_LENSES, Signatures, SignatureTable, lens_side
from qlens_jax.lens.validation import LensRequestError
from qlens_jax.models import Transformer
from qlens_jax.numerics import matmul_precision
from qlens_jax.progress import progress
from qlens_jax.readout import ReadoutContext, centered_embeddings, check_finite_scores, feature_chunk_for
from qlens_jax.readout.context import read_topk
from qlens_jax.readout.scores import key_score_fn, value_score_fn


def transport_operators_for(plan: LensPlan) -> TransportOperators | None:
    """The dense operators `plan` needs: the sweeps of its transport lenses, over only the
    blocks between the embedding / the top and its dictionaries. None when it needs none
    (Logit Lens only, or the per-feature path). Under non-default `submodule` / norm options
    (`linearization`) each side's sweeps differentiate that side's model, basis-major (the
    block-major sweeps form the modules' Jacobians from their weights)."""
    if plan.path != "dense" or not plan.transport_lenses:
        return None
    if plan.default_linearization:
        return _sweep(plan, plan.model, plan.sweeps, "auto")
    value_model, key_model = plan.transport_model("value"), plan.transport_model("key")
    if plan.options.jvp_norm == plan.options.vjp_norm:
        return _sweep(plan, value_model, plan.sweeps, "basis")
    first_order_sides = {parse_lens(lens).side for lens in plan.lenses if parse_lens(lens).transition == "first_order"}
    per_side = {
        side: tuple(s for s in plan.sweeps if s == side or (s == "first_order" and side in first_order_sides))
        for side in ("value", "key")
    }
    value = _sweep(plan, value_model, per_side["value"], "basis") if per_side["value"] else None
    key = _sweep(plan, key_model, per_side["key"], "basis") if per_side["key"] else None
    if value is None or key is None:
        return value or key
    # The value run's first-order Jacobians serve the value side, the key run's `first_order_all`
    # the key side (`_check_analysis_options` refuses the case where it would read `first_order`).
    return dataclasses.replace(
        value,
        key=key.key,
        key_at_sites=key.key_at_sites,
        key_to_point=key.key_to_point,
        first_order=value.first_order if value.first_order is not None else key.first_order,
        first_order_all=key.first_order_all,
        z_hop_key=key.z_hop_key,
        z_hop_key_all=key.z_hop_key_all,
    )


def _sweep(plan: LensPlan, model: Transformer, sweeps: tuple[str, ...], sweep_order: str) -> TransportOperators:
    """`transport_operators` of `model` (the plan's, or one side's `transport_model`) for `sweeps`."""
    return transport_operators(
        model,
        plan.tokens,
        plan.mask,
        sweeps=sweeps,
        plan=plan.chunks,
        mesh=plan.execution.mesh,
        with_input_norms=plan.needs_input_norms,
        shard_weights=plan.shard_weights,
        sweep_order=sweep_order,
        quiet=plan.execution.quiet,
        memory_budget_gb=plan.execution.memory_budget_gb,
        value_from_point=plan.value_from_point,
        key_to_point=plan.key_to_point,
        sites=plan.sites,
        precision=plan.options.precision,
    )


def check_operators(plan: LensPlan, operators: TransportOperators) -> None:
    """Refuse operators that lack rows the plan reads (computed for other layers, or without
    the input-normalization points), naming the dictionary."""
    n_layers = plan.model.config.n_layers
    normed = [r.points.read for r in plan.requests if r.points.read.norm is not None]
    if normed and operators.key is not None and operators.key.shape[0] <= max(row(p, n_layers) for p in normed):
        raise LensRequestError(
            "the given operators were computed without input-normalization points; recompute them with "
            "transport_operators(..., with_input_norms=True) for exact_norm_jacobian on normalizing SAEs"
        )
    for lens in plan.transport_lenses:
        if parse_lens(lens).transition != "full":
            continue
        side = lens_side(lens)
        for r in plan.requests:
            point = r.points.write if side == "value" else r.points.read
            if not operators.covers(side, point, n_layers):
                raise LensRequestError(
                    f"the given operators hold no {side} rows for {r.describe()}; point {point}): they were computed "
                    f"for other layers or sites; call transport_operators without value_from_point / key_to_point "
                    f"and with sites={plan.sites}"
                )


def _key_matrix(plan: LensPlan) -> Float[Array, "vocab d"]:
    """`centered_embeddings` of the sample; split over `vocab` like the sharded `W_E` when the
    weights are sharded (they already are, being computed from it; this makes sure)."""
    matrix = centered_embeddings(plan.model, jnp.asarray(plan.tokens), jnp.asarray(plan.mask))
    if not plan.shard_weights:
        return matrix
    return jax.device_put(matrix, sharding.named(plan.execution.mesh, "vocab", None))


def _readout_context(plan: LensPlan) -> ReadoutContext:
    budget = memory.budget_bytes(plan.execution.memory_budget_gb, memory.planning_device(plan.execution.mesh))
    return ReadoutContext(
        model=readout_model(plan.model, plan.options.unembed_norm),
        key_matrix=_key_matrix(plan),
        remove_final_norm_bias=plan.options.remove_final_norm_bias,
        k=plan.options.k,
        feature_chunk=plan.execution.feature_chunk or feature_chunk_for(plan.model.config.vocab_size, 0.25 * budget),
        mesh=plan.execution.mesh,
    )


def read_signatures(plan: LensPlan, operators: TransportOperators | None = None) -> Signatures:
    """Top-k and bottom-k tokens of each of the plan's features under each of its lenses, every
    matrix product at the plan's precision (`qlens_jax.numerics`).

    `operators` must hold the rows the plan's dense transport lenses read
    (`transport_operators_for(plan)` computes exactly those).
    """
    with matmul_precision(plan.options.precision):
        return _read_signatures(plan, operators)


def _read_signatures(plan: LensPlan, operators: TransportOperators | None) -> Signatures:
    if plan.path == "dense" and plan.transport_lenses:
        if operators is None:
            raise LensRequestError("the dense path needs operators: pass transport_operators_for(plan)")
        check_operators(plan, operators)
    context = _readout_context(plan)
    n_layers = plan.model.config.n_layers
    options, execution = plan.options, plan.execution
    signatures = Signatures()
    for lens in plan.lenses:
        side = lens_side(lens)
        for request in progress(plan.requests, desc=f"{lens} readout", quiet=execution.quiet, unit="dictionary"):
            if len(request.features) == 0:
                continue
            vectors = request.vectors(side)
            # checked before a self-check, which would report a NaN as a disagreement of the two paths
            finite = partial(_finite, lens=lens, side=side, request=request)
            point = request.points.write if side == "value" else request.points.read
            table_stats: dict[str, np.ndarray] = {}
            extra = {}
            transition = parse_lens(lens).transition
            if side == "value" and is_cross_layer(request.dictionary):
                result, extra = cross_layer.read_value(plan, request, lens, context, operators, finite)
            elif transition == "identity":
                result = _identity_read(plan, context, parse_lens(lens), vectors, point)
            elif transition == "full":
                if plan.path == "dense":
                    assert operators is not None  # checked on entry: the dense path has operators
                    op = operators.operator(side, point, n_layers, plan.model.config)
                    result = finite(context.read(side, vectors, op=op))
                    if execution.self_check:
                        self_check.check_query_lens(plan, request, side, vectors, point, op, lens)
                    if options.stats:
                        mean, mean_sq = per_feature_means(plan, side, np.asarray(vectors), point, execution.quiet)
                        table_stats["relative_variance"] = relative_variance(mean, mean_sq)
                else:
                    mean, mean_sq = per_feature_means(plan, side, np.asarray(vectors), point, execution.quiet)
                    result = context.read(side, mean, op=None)
                    if options.stats:
                        table_stats["relative_variance"] = relative_variance(mean, mean_sq)
            else:
                if plan.path == "dense":
                    assert operators is not None  # checked on entry: the dense path has operators
                    blocks, terms = first_order_terms_dense(
                        operators, request.points, side, n_layers, options.first_order_key_mask_seed
                    )
                    result = finite(context.read_first_order(side, vectors, terms))
                    if execution.self_check:
                        self_check.check_first_order(plan, request, side, vectors, terms, lens)
                else:
                    blocks, term_vectors = first_order_terms_per_feature(
                        plan.transport_model(side),
                        plan.tokens,
                        plan.mask,
                        plan.chunks,
                        side,
                        np.asarray(vectors),
                        request.points,
                        n_layers,
                        options.first_order_key_mask_seed,
                    )
                    result = context.read_first_order(side, term_vectors, None)
                extra = {"layer_indices": np.asarray([request.dictionary.layer, *blocks])}
                if options.stats and side == "value" and hop_kind(request.points, side) is None:
                    mean, mean_sq = first_order_value_means(
                        plan.transport_model(side),
                        plan.tokens,
                        plan.mask,
                        plan.chunks,
                        np.asarray(vectors),
                        request.points,
                        n_layers,
                    )
                    table_stats["relative_variance"] = relative_variance(mean, mean_sq)
            finite(result)
            signatures.append(
                SignatureTable(
                    lens=lens,
                    dictionary=request.dictionary.name,
                    layer=request.dictionary.layer,
                    feature_ids=request.features,
                    stats=table_stats,
                    **result,
                    **extra,
                )
            )
    return signatures


def _finite(result: dict, *, lens: str, side: str, request) -> dict:
    """`result` once `check_finite_scores` has found no NaN or infinite score in it."""
    check_finite_scores(
        result,
        request.features,
        lens=lens,
        side=side,
        dictionary=request.dictionary.name,
        layer=request.dictionary.layer,
    )
    return result


def _identity_read(plan: LensPlan, context: ReadoutContext, lens: Lens, vectors, point) -> dict:
    """An identity-transition lens (Logit Lens and the other `VECTOR:identity:READOUT` specs):
    the vectors read out where they are, by the lens's readout. The centred cosine of an
    untransported vector is centred on the vocabulary's mean embedding, as the authors'
    `apply_embed_cosine_centered` without a centre."""
    op = _logit_lens_op(plan, point)
    if lens.readout == "unembed":
        score_fn = value_score_fn(context.model, plan.options.remove_final_norm_bias, op)
    elif lens.readout == "embed":
        score_fn = key_score_fn(plan.model.W_E, op)
    else:
        score_fn = key_score_fn(_vocab_centered_embeddings(plan), op)
    return read_topk(score_fn, vectors, context.k, context.feature_chunk, context.layout)


def _vocab_centered_embeddings(plan: LensPlan) -> Float[Array, "vocab d"]:
    """`(e_t - c) / ||e_t - c||` with `c` the mean row of `W_E` over the vocabulary."""
    W_E = plan.model.W_E.astype(jnp.float32)
    centred = W_E - W_E.mean(axis=0)
    norms = jnp.linalg.norm(centred, axis=-1, keepdims=True)
    return centred / jnp.maximum(norms, 1e-8)


def _logit_lens_op(plan: LensPlan, point) -> Float[Array, "d q"] | None:
    """Logit Lens's map into the residual: `W_O` for value vectors at `z` (as `X @ op.T`), else
    none (docs/definitions.md section 1b; the key side at `z` is refused by `plan_request`)."""
    if point.site != "z":
        return None
    return plan.model.blocks.attn.o_proj.weight[point.layer].T


def query_lens(
    model: Transformer,
    dictionaries,
    tokens,
    mask=None,
    *,
    lenses: Sequence[str | Lens] = DEFAULT_LENSES,
    features=None,
    options: LensOptions = LensOptions(),
    execution: ExecutionOptions = ExecutionOptions(),
    operators: TransportOperators | None = None,
    **option_fields,
) -> Signatures:
    """Top-k and bottom-k tokens of each feature under each lens (docs/definitions.md section 1).

    The arguments are `plan_request`'s (model, dictionaries, sample, lenses, features and the
    two option groups), plus:
        operators: precomputed `transport_operators` for this model and sample.
        **option_fields: shorthand for single fields of either option group, e.g. `k=10` or
            `path="dense"`; a name in neither group raises `TypeError`.

    The stages are `plan_request`, `transport_operators_for` and `read_signatures`.
    """
    options, execution = split_options(option_fields, options, execution)
    plan = plan_request(
        model,
        dictionaries,
        tokens,
        mask,
        lenses=lenses,
        features=features,
        options=options,
        execution=execution,
        have_operators=operators is not None,
    )
    if operators is None:
        operators = transport_operators_for(plan)
    elif not plan.default_linearization:
        raise LensRequestError(
            f"operators= cannot be used with submodule={options.submodule!r}, jvp_norm={options.jvp_norm}, "
            f"vjp_norm={options.vjp_norm}: operators do not record which Jacobians they hold; let query_lens compute "
            "them (or call transport_operators_for on the plan)"
        )
    return read_signatures(plan, operators)
