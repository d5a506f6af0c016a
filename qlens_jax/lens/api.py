"""`query_lens`: signatures of every requested feature under every requested lens.

The flow: validate everything (before any compilation); transport the features (dense
operators for large requests, per-feature linear maps for small ones, DESIGN.md section 2);
read out top-k / bottom-k tokens in feature chunks; self-check a few features of the dense
path against the per-feature path.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jaxtyping import Array, Float

from qlens_jax import memory, sharding
from qlens_jax.numerics import DTYPES, applies_precision, cast_model
from qlens_jax.lens import per_feature
from qlens_jax.lens.chunks import ChunkPlan, iter_token_chunks, plan_chunks
from qlens_jax.lens.first_order import first_order_terms_dense, first_order_terms_per_feature
from qlens_jax.lens.operators import TransportOperators, transport_operators
from qlens_jax.lens.points import key_residual_point
from qlens_jax.lens.points import DictionaryPoints, dictionary_points, n_key_points
from qlens_jax.lens.readout import centered_embeddings, feature_chunk_for
from qlens_jax.lens.readouts import FeatureRows, ReadoutContext
from qlens_jax.lens.signatures import DEFAULT_LENSES, LENSES, Signatures, SignatureTable, lens_side
from qlens_jax.lens.validation import LensRequestError, check_tokens
from qlens_jax.models import Transformer
from qlens_jax.progress import progress

PATHS = ("auto", "dense", "per-feature")
# By dtype or precision, whichever is looser (`qlens_jax.numerics`).
SELF_CHECK_RTOL = {"float32": 1e-4, "tf32": 1e-2, "bfloat16": 5e-2}


class SelfCheckError(RuntimeError):
    """The dense path disagrees with the per-feature path: the numbers cannot be trusted."""


@dataclass(frozen=True)
class Request:
    """One dictionary's part of a request: which features, and where they are transported from."""

    index: int
    dictionary: object
    features: np.ndarray
    points: DictionaryPoints

    def vectors(self, side: str) -> FeatureRows:
        """The requested features' value or key vectors, read chunk by chunk from the
        dictionary's weights (no copy of a million rows is ever made)."""
        d = self.dictionary
        return FeatureRows(d.W_dec if side == "value" else d.W_enc, side == "key", self.features)


def _as_list(dictionaries) -> list:
    if hasattr(dictionaries, "W_enc"):
        return [dictionaries]
    items = list(dictionaries)
    if not items:
        raise LensRequestError("no dictionaries given")
    return items


def _feature_ids(features, index: int, dictionary) -> np.ndarray:
    if features is None:
        ids = np.arange(dictionary.d_sae)
    elif isinstance(features, dict):
        key = index if index in features else (dictionary.name, dictionary.layer)
        if key not in features:
            return np.zeros(0, np.int64)
        ids = np.asarray(features[key])
    else:
        ids = np.asarray(features)
    ids = ids.astype(np.int64).reshape(-1)
    bad = ids[(ids < 0) | (ids >= dictionary.d_sae)]
    if bad.size:
        raise LensRequestError(
            f"feature index {int(bad[0])} is out of range for dictionary {dictionary.name!r} "
            f"(layer {dictionary.layer}) with {dictionary.d_sae} features"
        )
    return ids


def _validate(model, dictionaries, lenses, k, dtype, path, exact_norm_jacobian, features) -> list[Request]:
    from qlens_jax.dictionaries import validate_dictionary

    unknown = [lens for lens in lenses if lens not in LENSES]
    if unknown:
        raise LensRequestError(f"unknown lens(es) {unknown}; choose from {', '.join(LENSES)}")
    if not lenses:
        raise LensRequestError("no lenses requested")
    if not isinstance(k, (int, np.integer)) or k < 1 or k > model.config.vocab_size:
        raise LensRequestError(f"k={k} must be an integer in [1, vocab size {model.config.vocab_size}]")
    if dtype not in DTYPES:
        raise LensRequestError(f"dtype {dtype!r} is not supported; choose from {', '.join(DTYPES)}")
    if path not in PATHS:
        raise LensRequestError(f"path {path!r} is not one of {', '.join(PATHS)}")
    requests = []
    for index, dictionary in enumerate(_as_list(dictionaries)):
        validate_dictionary(dictionary, model)
        points = dictionary_points(
            dictionary.site_in,
            dictionary.site_out,
            dictionary.layer,
            model.config.n_layers,
            exact_norm_jacobian,
            getattr(dictionary, "input_norm", "none"),
        )
        requests.append(Request(index, dictionary, _feature_ids(features, index, dictionary), points))
    if sum(len(r.features) for r in requests) == 0:
        raise LensRequestError("the request selects no features")
    return requests


def _maybe_shard_weights(model: Transformer, mesh, shard_weights: bool | None) -> tuple[Transformer, bool]:
    """The model with its weights split over `mesh` if `shard_weights` asks for it (None: if
    `sharding.should_shard_weights`), and whether they are. Replicated weights are left where
    they are (the sweeps replicate them; the per-feature path runs on one device)."""
    if mesh is None:
        if shard_weights:
            raise LensRequestError("shard_weights=True needs a mesh= whose `feature` axis splits the weights")
        return model, False
    if shard_weights is None:
        shard_weights = sharding.should_shard_weights(model, mesh)
    return (sharding.shard_weights(model, mesh) if shard_weights else model), shard_weights


def _key_matrix(model: Transformer, tokens, mask, mesh) -> Float[Array, "vocab d"]:
    """`centered_embeddings` of the sample; split over `vocab` like the sharded `W_E` when
    `mesh` is given (they already are, being computed from it; this makes sure)."""
    matrix = centered_embeddings(model, jnp.asarray(tokens), jnp.asarray(mask))
    return matrix if mesh is None else jax.device_put(matrix, NamedSharding(mesh, sharding.spec("vocab", None)))


def _per_feature_means(model, tokens, mask, plan: ChunkPlan, side: str, vectors, points, quiet: bool):
    """Mean transported vector and mean squared norm per feature, over the whole sample."""
    total, total_sq = 0.0, 0.0
    chunks = list(iter_token_chunks(tokens, mask, plan.sequences_per_chunk))
    needs_norms = bool((np.asarray(points) >= n_key_points(model.config.n_layers)).any())
    for chunk_tokens, chunk_mask in progress(chunks, desc=f"per-feature {side}", quiet=quiet, unit="chunk"):
        if side == "value":
            s, sq = per_feature.value_chunk(model, chunk_tokens, chunk_mask, vectors, points, plan.tangent_chunk)
        else:
            s, sq = per_feature.key_chunk(model, chunk_tokens, chunk_mask, vectors, points, plan.tangent_chunk, needs_norms)
        total, total_sq = total + s, total_sq + sq
    n = float(mask.sum())
    return total / n, total_sq / n


def _relative_variance(mean, mean_sq):
    """`E||g - mean g||^2 / E||g||^2 = 1 - ||mean g||^2 / E||g||^2`."""
    mean_sq = np.asarray(mean_sq)
    return np.where(mean_sq > 0, 1.0 - (np.asarray(mean) ** 2).sum(-1) / np.where(mean_sq > 0, mean_sq, 1.0), 0.0)


def _check_coverage(operators: TransportOperators, requests, transport_lenses, n_layers: int) -> None:
    """Operators computed for other layers (block-major sweeps stop early) must not be read."""
    for lens in transport_lenses:
        if not lens.startswith("query_lens"):
            continue
        side = lens_side(lens)
        for r in requests:
            point = r.points.write if side == "value" else r.points.read
            if not operators.covers(side, point, n_layers):
                raise LensRequestError(
                    f"the given operators hold no {side} rows for dictionary {r.index} ({r.dictionary.name}, layer {r.dictionary.layer}; point {point}): they were computed "
                    f"for other layers; call transport_operators without value_from_point / key_to_point"
                )


@applies_precision
def query_lens(
    model: Transformer,
    dictionaries,
    tokens,
    mask=None,
    *,
    lenses: Sequence[str] = DEFAULT_LENSES,
    features=None,
    k: int = 25,
    dtype: str = "float32",
    precision: str = "float32",
    path: str = "auto",
    stats: bool = False,
    self_check: bool = True,
    self_check_features: int = 3,
    remove_final_norm_bias: bool = False,
    first_order_key_mask_seed: bool = False,
    exact_norm_jacobian: bool = False,
    operators: TransportOperators | None = None,
    mesh=None,
    shard_weights: bool | None = None,
    memory_budget_gb: float | None = None,
    sequences_per_chunk: int | None = None,
    tangent_chunk: int | None = None,
    feature_chunk: int | None = None,
    quiet: bool = True,
) -> Signatures:
    """Top-k and bottom-k tokens of each feature under each lens (DESIGN.md section 1).

    Args:
        model: the converted language model.
        dictionaries: a `Dictionary`, a `DictionarySet` or a list of dictionaries.
        tokens, mask: the token sample `[batch, seq]` and its right-padding mask.
        lenses: any of `LENSES`.
        features: None (all), indices applied to every dictionary, or a dict from dictionary
            position (or `(name, layer)`) to indices.
        dtype: "float32" (reference) or "bfloat16" (speed; sums stay float32).
        precision: how matrix products multiply: "float32" (true float32 on every backend),
            "tf32" (NVIDIA GPUs) or "bfloat16" (GPUs, TPUs); see `qlens_jax.numerics`.
        path: "dense" (operators, cost independent of the number of features), "per-feature"
            (one linearized pass per feature), or "auto" (the cheaper one).
        stats: also report each feature's relative variance for the Query Lens lenses (a
            per-feature pass over the sample: costs one pass per feature and side).
        self_check: recompute `self_check_features` features per dictionary per feature on the
            dense path and raise `SelfCheckError` if they disagree.
        remove_final_norm_bias: value readouts without LayerNorm's bias term.
        first_order_key_mask_seed: mask the first-order key seed at pads too (the reference
            seeds every position; DESIGN.md section 1).
        exact_norm_jacobian: keys include the Jacobian of the norm the dictionary's input really
            passes: the MLP pre-norm for transcoders (the reference reads before it) and the
            dictionary's own per-token input normalization (`layer_norm`, e.g. OpenAI TopK SAEs,
            or `constant_norm_rescale`; the reference uses the raw encoder column).
        operators: precomputed `transport_operators` for this model and sample.
        mesh: a `qlens_jax.sharding.make_mesh` mesh: dense sweeps split token chunks over
            `data` and basis vectors over `feature`; readouts split features over all devices.
            Default: all devices on `data` for the sweeps, readouts on one device.
        shard_weights: with a `mesh`, split the model's vocabulary matrices and MLP units over
            its `feature` axis (`sharding.shard_weights`): sweeps and readouts then run on the
            split weights, with the same results. False replicates them; None (default) shards
            when they take more than half of a device's free memory (`should_shard_weights`).
    """
    lenses = tuple(lenses)
    numbers = max(dtype, precision, key=lambda name: SELF_CHECK_RTOL.get(name, 0.0))
    requests = _validate(model, dictionaries, lenses, k, dtype, path, exact_norm_jacobian, features)
    tokens, mask = check_tokens(model, tokens, mask)
    model = cast_model(model, dtype) if dtype != "float32" else model
    model, shard_weights = _maybe_shard_weights(model, mesh, shard_weights)
    plan = plan_chunks(model, tokens.shape, memory_budget_gb, sequences_per_chunk, tangent_chunk, device=memory.planning_device(mesh))
    n_features = sum(len(r.features) for r in requests)
    transport_lenses = [lens for lens in lenses if not lens.startswith("logit_lens")]
    if path == "auto":
        path = "dense" if (operators is not None or n_features >= model.config.d_model) else "per-feature"
    n_layers = model.config.n_layers
    needs_norms = any(r.points.read >= n_key_points(model.config.n_layers) for r in requests)
    if needs_norms and operators is not None and operators.key is not None and operators.key.shape[0] <= max(r.points.read for r in requests):
        raise LensRequestError(
            "the given operators were computed without input-normalization points; recompute them with "
            "transport_operators(..., with_input_norms=True) for exact_norm_jacobian on normalizing SAEs"
        )
    if transport_lenses and path == "dense" and operators is None:
        sweeps = {"query_lens_value": "value", "query_lens_key": "key"}
        needed = tuple(sorted({sweeps.get(lens, "first_order") for lens in transport_lenses}))
        operators = transport_operators(
            model, tokens, mask, sweeps=needed, plan=plan, mesh=mesh, with_input_norms=needs_norms,
            shard_weights=shard_weights, quiet=quiet, memory_budget_gb=memory_budget_gb, precision=precision,
            value_from_point=min(r.points.write for r in requests),
            key_to_point=max(key_residual_point(r.points.read, n_layers) for r in requests),
        )
    if path == "dense" and operators is not None:
        _check_coverage(operators, requests, transport_lenses, n_layers)
    budget = memory.budget_bytes(memory_budget_gb, memory.planning_device(mesh))
    context = ReadoutContext(
        model=model,
        key_matrix=_key_matrix(model, tokens, mask, mesh if shard_weights else None),
        remove_final_norm_bias=remove_final_norm_bias,
        k=k,
        feature_chunk=feature_chunk or feature_chunk_for(model.config.vocab_size, 0.25 * budget),
        mesh=mesh,
    )
    signatures = Signatures()
    for lens in lenses:
        side = lens_side(lens)
        for request in progress(requests, desc=f"{lens} readout", quiet=quiet, unit="dictionary"):
            if len(request.features) == 0:
                continue
            vectors = request.vectors(side)
            point = request.points.write if side == "value" else request.points.read
            table_stats: dict[str, np.ndarray] = {}
            if lens.startswith("logit_lens"):
                result = context.read(side, vectors, op=None, logit_lens=True)
            elif lens.startswith("query_lens"):
                if path == "dense":
                    op = operators.value[point] if side == "value" else operators.key[point]
                    result = context.read(side, vectors, op=op)
                    if self_check:
                        _self_check_query_lens(model, tokens, mask, plan, side, vectors, point, op, self_check_features, numbers, lens, request)
                else:
                    mean, mean_sq = _per_feature_means(
                        model, tokens, mask, plan, side, np.asarray(vectors), jnp.full(len(vectors), point), quiet
                    )
                    result = context.read(side, mean, op=None)
                    if stats:
                        table_stats["relative_variance"] = _relative_variance(mean, mean_sq)
                if stats and "relative_variance" not in table_stats:
                    mean, mean_sq = _per_feature_means(
                        model, tokens, mask, plan, side, np.asarray(vectors), jnp.full(len(vectors), point), quiet
                    )
                    table_stats["relative_variance"] = _relative_variance(mean, mean_sq)
            else:
                if path == "dense":
                    blocks, terms = first_order_terms_dense(operators, request.points, side, n_layers, first_order_key_mask_seed)
                    if self_check:
                        _self_check_first_order(model, tokens, mask, plan, side, vectors, request, terms, blocks, n_layers, first_order_key_mask_seed, self_check_features, numbers, lens)
                    result = context.read_first_order(side, vectors, terms)
                else:
                    blocks, term_vectors = first_order_terms_per_feature(
                        model, tokens, mask, plan, side, np.asarray(vectors), request.points, n_layers, first_order_key_mask_seed
                    )
                    result = context.read_first_order(side, term_vectors, None)
            signatures.append(
                SignatureTable(
                    lens=lens,
                    dictionary=request.dictionary.name,
                    layer=request.dictionary.layer,
                    feature_ids=request.features,
                    stats=table_stats,
                    **result,
                    **({"layer_indices": np.asarray([request.dictionary.layer, *blocks])} if lens.startswith("first_order") else {}),
                )
            )
    return signatures


def _self_check_indices(n: int, count: int) -> np.ndarray:
    return np.unique(np.linspace(0, n - 1, min(n, count)).astype(int))


def _compare(dense, reference, rtol, what):
    dense, reference = sharding.to_host(dense), sharding.to_host(reference)
    scale = np.linalg.norm(reference, axis=-1)
    err = np.linalg.norm(dense - reference, axis=-1) / np.maximum(scale, 1e-30)
    worst = float(err.max())
    if worst > rtol:
        raise SelfCheckError(
            f"self-check failed for {what}: dense operators and per-feature transport differ by "
            f"{worst:.2e} (relative, tolerance {rtol:.0e}). The numbers cannot be trusted; please "
            "report this with your jax/jaxlib versions and device."
        )


def _self_check_query_lens(model, tokens, mask, plan, side, vectors, point, op, count, dtype, lens, request):
    pick = _self_check_indices(len(vectors), count)
    sample = np.asarray(vectors[pick], np.float32)
    mean, _ = _per_feature_means(model, tokens, mask, plan, side, sample, jnp.full(len(pick), point), True)
    _compare(sample @ op.T, mean, SELF_CHECK_RTOL[dtype], f"{lens} of {request.dictionary.name} (layer {request.dictionary.layer})")


def _self_check_first_order(model, tokens, mask, plan, side, vectors, request, terms, blocks, n_layers, mask_seed, count, dtype, lens):
    pick = _self_check_indices(len(vectors), count)
    sample = np.asarray(vectors[pick], np.float32)
    _, reference = first_order_terms_per_feature(model, tokens, mask, plan, side, sample, request.points, n_layers, mask_seed)
    dense = jnp.einsum("nd,tid->nti", sample, terms)
    _compare(dense.sum(1), reference.sum(1), SELF_CHECK_RTOL[dtype], f"{lens} of {request.dictionary.name} (layer {request.dictionary.layer})")
