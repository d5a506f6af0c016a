"""The first stage of a request: validate everything, then fix how it will run.

`plan_request` checks the lenses, options, dictionaries, features and token sample before
anything is compiled, casts and places the model, resolves the "auto" path and plans the
chunk sizes. The result, a `LensPlan`, is what the later stages (`transport_operators_for`,
`read_signatures`) take; `LensPlan.select` narrows it to a part of the request (the main
job reads one shard at a time) without validating again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from qlens_jax import memory, sharding
from qlens_jax.dictionaries import Dictionary
from qlens_jax.lens import auto, cross_layer
from qlens_jax.lens.chunks import ChunkPlan, plan_chunks
from qlens_jax.lens.lens_spec import Lens, parse_lens
from qlens_jax.lens.linearization import is_default, transport_model
from qlens_jax.lens.options import ExecutionOptions, LensOptions
from qlens_jax.lens.points import MODULE_OUTPUT_SITES, DictionaryPoints, Point, dictionary_points, flows_into
from qlens_jax.lens.signatures import DEFAULT_LENSES
from qlens_jax.lens.validation import LensRequestError, check_tokens
from qlens_jax.models import Transformer
from qlens_jax.readout import FeatureRows


@dataclass(frozen=True)
class Request:
    """One dictionary's part of a request: which features, and where they are transported from."""

    index: int
    dictionary: Dictionary
    features: np.ndarray
    points: DictionaryPoints

    def vectors(self, side: str) -> FeatureRows:
        """The requested features' value or key vectors, read chunk by chunk from the
        dictionary's weights (no copy of a million rows is ever made)."""
        d = self.dictionary
        return FeatureRows(d.W_dec if side == "value" else d.W_enc, side == "key", self.features)

    def describe(self) -> str:
        return f"dictionary {self.index} ({self.dictionary.name}, layer {self.dictionary.layer})"


def dictionary_list(dictionaries) -> list:
    """A `Dictionary`, a `DictionarySet` or a sequence of dictionaries, as a non-empty list."""
    if hasattr(dictionaries, "W_enc"):
        return [dictionaries]
    items = list(dictionaries)
    if not items:
        raise LensRequestError("no dictionaries given")
    return items


def feature_ids(features, index: int, dictionary) -> np.ndarray:
    """The feature ids `features` selects of the `index`-th dictionary: None (all), ids
    applied to every dictionary, or a dict from dictionary position (or `(name, layer)`) to ids."""
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


@dataclass(frozen=True)
class LensPlan:
    """A validated request and how it runs (see the module docstring).

    `model` is cast to `options.dtype` and, when `shard_weights`, split over the mesh;
    `tokens` / `mask` are the checked sample; `path` is "dense" or "per-feature".
    """

    model: Transformer
    tokens: np.ndarray
    mask: np.ndarray
    lenses: tuple[str, ...]
    requests: tuple[Request, ...]
    options: LensOptions
    execution: ExecutionOptions
    path: str
    chunks: ChunkPlan
    shard_weights: bool

    def transport_model(self, side: str) -> Transformer:
        """The model as the `side`'s transports differentiate it (`linearization`: the
        `submodule` and the side's norm-Jacobian option); `model` for the defaults."""
        norm = self.options.jvp_norm if side == "value" else self.options.vjp_norm
        return transport_model(self.model, self.options.submodule, norm)

    @property
    def default_linearization(self) -> bool:
        """Whether both sides differentiate the model as it is."""
        o = self.options
        return is_default(o.submodule, o.jvp_norm) and is_default(o.submodule, o.vjp_norm)

    @property
    def n_features(self) -> int:
        return sum(len(r.features) for r in self.requests)

    @property
    def transport_lenses(self) -> tuple[str, ...]:
        """The lenses that need transport (all but the identity transition, Logit Lens)."""
        return tuple(lens for lens in self.lenses if parse_lens(lens).transports)

    @property
    def sweeps(self) -> tuple[str, ...]:
        """The operator sweeps the transport lenses need, in a fixed order."""
        return tuple(sorted({str(parse_lens(lens).sweep) for lens in self.transport_lenses}))

    @property
    def needs_input_norms(self) -> bool:
        """Whether a key is read after an input normalization (extra key-sweep points)."""
        return any(r.points.read.norm is not None for r in self.requests)

    @property
    def value_from_point(self) -> Point:
        """The first residual point a value sweep must cover."""
        n_layers = self.model.config.n_layers
        return min(flows_into(r.points.write, n_layers) for r in self.requests)

    @property
    def key_to_point(self) -> Point:
        """The last residual point a key sweep must cover."""
        n_layers = self.model.config.n_layers
        return max(flows_into(r.points.read, n_layers) for r in self.requests)

    @property
    def sites(self) -> tuple[Point, ...]:
        """The module outputs the sweeps must record for this plan's dictionaries: where they
        read, and `z` where they write."""
        points = {p for r in self.requests for p in (r.points.read, r.points.write) if p.site in MODULE_OUTPUT_SITES}
        return tuple(sorted(points))

    def select(self, lenses: Sequence[str] | None = None, features: dict[int, np.ndarray] | None = None) -> LensPlan:
        """This plan for some of its lenses and, per dictionary position, some feature ids
        (dictionaries not named in `features` are dropped). Path and chunks stay as planned."""
        requests = self.requests
        if features is not None:
            requests = tuple(
                replace(r, features=feature_ids(features[r.index], r.index, r.dictionary))
                for r in self.requests
                if r.index in features
            )
        chosen = self.lenses if lenses is None else tuple(parse_lens(lens).name for lens in lenses)
        unknown = [lens for lens in chosen if lens not in self.lenses]
        if unknown:
            raise LensRequestError(f"lens(es) {unknown} are not part of this plan ({', '.join(self.lenses)})")
        return replace(self, lenses=chosen, requests=requests)


def _check_lenses(lenses: Sequence[str | Lens]) -> tuple[str, ...]:
    """The lenses' names (`lens_spec.parse_lens` refuses an unknown one, naming the part)."""
    if not lenses:
        raise LensRequestError("no lenses requested")
    names = tuple(parse_lens(lens).name for lens in lenses)
    if len(set(names)) != len(names):
        raise LensRequestError(f"a lens is requested twice: {', '.join(names)}")
    return names


def _check_analysis_options(options: LensOptions, lenses: tuple[str, ...], requests: list, path: str) -> None:
    """Refuse `submodule` on a lens without transport or a dictionary on a module output (its
    first hop is through one module kind), and dense first order in both directions with
    different norm options on the two sides (the first-order sweep holds one Jacobian per module)."""
    if options.submodule == "both":
        pass
    elif untransported := [lens for lens in lenses if not parse_lens(lens).transports]:
        raise LensRequestError(
            f"submodule={options.submodule!r} has no meaning for {untransported[0]}: it has no transport "
            "(the vector is read where the dictionary puts it); drop the lens or the submodule option"
        )
    elif on_outputs := [r for r in requests if r.points.read.module is not None or r.points.write.site == "z"]:
        raise LensRequestError(
            f"submodule={options.submodule!r} is not available for {on_outputs[0].describe()}: it reads or writes a "
            "module output, whose first hop goes through that module; use submodule='both'"
        )
    first_order = {parse_lens(lens).side for lens in lenses if parse_lens(lens).transition == "first_order"}
    if (
        path != "per-feature"
        and first_order == {"value", "key"}
        and options.first_order_key_mask_seed
        and options.jvp_norm != options.vjp_norm
    ):
        raise LensRequestError(
            "first-order lenses on both sides with first_order_key_mask_seed and different jvp_norm / vjp_norm need "
            "two Jacobians per module, which the dense first-order sweep does not hold; use path='per-feature'"
        )


def plan_request(
    model: Transformer,
    dictionaries,
    tokens,
    mask=None,
    *,
    lenses: Sequence[str | Lens] = DEFAULT_LENSES,
    features=None,
    options: LensOptions = LensOptions(),
    execution: ExecutionOptions = ExecutionOptions(),
    have_operators: bool = False,
) -> LensPlan:
    """Validate a request and plan its run (the first stage of `query_lens`).

    Args:
        model: the converted language model.
        dictionaries: a `Dictionary`, a `DictionarySet` or a list of dictionaries.
        tokens, mask: the token sample `[batch, seq]` and its right-padding mask.
        lenses: `Lens` values, preset names (`LENSES`) or `VECTOR:TRANSITION:READOUT` specs.
        features: None (all), ids applied to every dictionary, or a dict from dictionary
            position (or `(name, layer)`) to ids.
        options, execution: see `LensOptions` and `ExecutionOptions`.
        have_operators: the caller brings precomputed operators (the "auto" path is then dense).

    Raises `LensRequestError` (or `DictionaryError`) naming the bad input; nothing is compiled.
    """
    from qlens_jax.dictionaries import validate_dictionary
    from qlens_jax.lens.scales import check_weight_scales
    from qlens_jax.numerics import cast_model, check_precision

    lenses = _check_lenses(lenses)
    options.check(model.config.vocab_size)
    execution.check()
    check_precision(options.precision)
    requests = []
    for index, dictionary in enumerate(dictionary_list(dictionaries)):
        validate_dictionary(dictionary, model)
        points = dictionary_points(
            dictionary.site_in,
            dictionary.site_out,
            dictionary.layer,
            model.config.n_layers,
            options.exact_norm_jacobian,
            getattr(dictionary, "input_norm", "none"),
            model.config.parallel_residual,
        )
        requests.append(Request(index, dictionary, feature_ids(features, index, dictionary), points))
    if sum(len(r.features) for r in requests) == 0:
        raise LensRequestError("the request selects no features")
    cross_layer.check_requests(requests, lenses, options, model.config.n_layers)
    check_weight_scales(model, requests, lenses, options.dtype, options.precision)
    normalizing = [
        r
        for r in requests
        if r.points.read.site in MODULE_OUTPUT_SITES
        and getattr(r.dictionary, "input_norm", "none") not in ("none", "scale")
    ]
    if options.exact_norm_jacobian and normalizing:
        raise LensRequestError(
            f"exact_norm_jacobian is not available for {normalizing[0].describe()}: it normalizes its input "
            f"({normalizing[0].dictionary.input_norm}) at a module output ({normalizing[0].points.read}), where the "
            "sweeps record no normalized points; run it without exact_norm_jacobian (the reference convention)"
        )
    _check_analysis_options(options, lenses, requests, execution.path)
    z_readers = [r for r in requests if r.points.read.site == "z"]
    z_keys = [lens for lens in lenses if parse_lens(lens).side == "key" and not parse_lens(lens).transports]
    if z_keys and z_readers:
        raise LensRequestError(
            f"{z_keys[0]} has no definition for {z_readers[0].describe()}: its key vectors live in the heads' "
            "output space (z, n_heads x head_dim wide), not the residual stream that W_E embeds into; "
            f"drop {z_keys[0]} for z dictionaries (query_lens_key and first_order_key reach the embedding)"
        )
    tokens, mask = check_tokens(model, tokens, mask)
    model = cast_model(model, options.dtype) if options.dtype != "float32" else model
    shard_weights = execution.shard_weights
    if execution.mesh is not None:
        if shard_weights is None:
            shard_weights = sharding.should_shard_weights(model, execution.mesh)
        if shard_weights:
            model = sharding.shard_weights(model, execution.mesh)
    chunks = plan_chunks(
        model,
        tokens.shape,
        execution.memory_budget_gb,
        execution.sequences_per_chunk,
        execution.tangent_chunk,
        device=memory.planning_device(execution.mesh),
    )
    transported = [parse_lens(lens) for lens in lenses if parse_lens(lens).transports]
    sides = [(lens.side, lens.transition == "first_order") for lens in transported]
    costs = auto.transport_passes([(len(r.features), r.points) for r in requests], sides, model.config)
    path = auto.path(execution.path, *costs, have_operators=have_operators)
    return LensPlan(
        model=model,
        tokens=tokens,
        mask=mask,
        lenses=lenses,
        requests=tuple(requests),
        options=options,
        execution=execution,
        path=path,
        chunks=chunks,
        shard_weights=bool(shard_weights),
    )
