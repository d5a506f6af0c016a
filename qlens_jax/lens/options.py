"""The options of a Query Lens request, in two groups.

`LensOptions` holds what changes the numbers: a run's fingerprint records them, and two runs
with different `LensOptions` are different results. `ExecutionOptions` holds how the work is
done (path, devices, memory, chunk sizes, self-check, progress): the results agree to the
numerical tolerance of docs/definitions.md section 3 whatever they are.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from qlens_jax import numerics
from qlens_jax.lens.linearization import SUBMODULES
from qlens_jax.lens.validation import LensRequestError

DTYPES = tuple(numerics.DTYPES)
PRECISIONS = numerics.PRECISIONS
PATHS = ("auto", "dense", "per-feature")


@dataclass(frozen=True)
class LensOptions:
    """What a request computes (beyond its lenses, dictionaries, features and sample).

    Attributes:
        k: how many top and bottom tokens each signature lists.
        dtype: what the model's arrays are stored in during the run: "float32" (the
            reference) or "bfloat16" (half the memory; sums stay float32).
        precision: how matrix products are computed: "float32" (true float32 on every
            backend, the authors' numbers), "tf32" (GPUs only) or "bfloat16" (bf16 inputs,
            float32 accumulation). Independent of `dtype`: bfloat16 arrays multiplied at
            "float32" precision are exact products of the rounded values.
        stats: also report each feature's relative variance for the Query Lens lenses (one
            per-feature pass over the sample per feature and side).
        remove_final_norm_bias: value readouts without the final LayerNorm's bias term.
        first_order_key_mask_seed: seed the first-order key cotangent at valid positions only
            (the reference seeds every position, pads included; docs/definitions.md section 1).
        exact_norm_jacobian: keys include the Jacobian of the norm the dictionary's input
            really passes: the MLP pre-norm for transcoders (the reference reads before it)
            and the dictionary's own per-token input normalization (`layer_norm`, e.g. OpenAI
            TopK SAEs, or `constant_norm_rescale`; the reference uses the raw encoder column).
        submodule: transport through "both" module kinds, attention only ("attn") or MLPs only
            ("mlp"), on both sides of the Query Lens and first order (the authors' `submodule`;
            `qlens_jax.lens.linearization`). Lenses with no transport (Logit Lens) refuse it.
        jvp_norm, vjp_norm: the value (JVP) and key (VJP) transports include the Jacobians of
            the blocks' norms (the authors' `use_jvp_layer_norm` / `use_vjp_layer_norm`); off,
            each module is differentiated at its normalized input as if its norms were the identity.
        unembed_norm: the value readout applies the final norm to the vector before `W_U` (the
            authors' `use_unembed_layer_norm`); off, the vector is unembedded as it is.
    """

    k: int = 25
    dtype: str = "float32"
    precision: str = "float32"
    stats: bool = False
    remove_final_norm_bias: bool = False
    first_order_key_mask_seed: bool = False
    exact_norm_jacobian: bool = False
    submodule: str = "both"
    jvp_norm: bool = True
    vjp_norm: bool = True
    unembed_norm: bool = True

    def check(self, vocab_size: int) -> None:
        """Raise `LensRequestError` naming the first option that cannot be used."""
        if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or not 1 <= self.k <= vocab_size:
            raise LensRequestError(f"k={self.k} must be an integer in [1, vocab size {vocab_size}]")
        if self.dtype not in DTYPES:
            raise LensRequestError(f"dtype {self.dtype!r} is not supported; choose from {', '.join(DTYPES)}")
        if self.precision not in PRECISIONS:
            raise LensRequestError(
                f"precision {self.precision!r} is not supported; choose from {', '.join(PRECISIONS)}"
            )
        if self.submodule not in SUBMODULES:
            raise LensRequestError(f"submodule {self.submodule!r} is not one of {', '.join(SUBMODULES)}")

    def fingerprint(self) -> dict[str, Any]:
        """The options as plain values, for run manifests."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def analysis_changes(self) -> dict[str, Any]:
        """The authors' analysis options (`ANALYSIS_OPTIONS`) that differ from their defaults:
        what a run's fingerprint adds, so that runs made before the options existed keep theirs."""
        default = LensOptions()
        return {name: getattr(self, name) for name in ANALYSIS_OPTIONS if getattr(self, name) != getattr(default, name)}


ANALYSIS_OPTIONS = ("submodule", "jvp_norm", "vjp_norm", "unembed_norm")


@dataclass(frozen=True)
class ExecutionOptions:
    """How a request runs; none of these changes what it computes.

    Attributes:
        path: "dense" (transport operators: cost independent of the number of features),
            "per-feature" (one linearized pass per feature), or "auto" (the cheaper one).
        mesh: a `qlens_jax.sharding.make_mesh` mesh: dense sweeps split token chunks over
            `data` and basis vectors over `feature`; readouts split features over all
            devices. None: all devices on `data` for the sweeps, readouts on one device.
        shard_weights: with a `mesh`, split the vocabulary matrices and MLP units over its
            `feature` axis (same results). False replicates them; None shards when they take
            more than half of a device's free memory.
        memory_budget_gb: the memory the chunk planners may use; None: from the device.
        sequences_per_chunk, tangent_chunk, feature_chunk: chunk sizes; None: planned from
            the budget.
        self_check: recompute `self_check_features` features per dictionary and lens on the
            per-feature path and raise `SelfCheckError` if the dense path disagrees.
        quiet: no progress bars.
    """

    path: str = "auto"
    mesh: Any = None
    shard_weights: bool | None = None
    memory_budget_gb: float | None = None
    sequences_per_chunk: int | None = None
    tangent_chunk: int | None = None
    feature_chunk: int | None = None
    self_check: bool = True
    self_check_features: int = 3
    quiet: bool = True

    def check(self) -> None:
        """Raise `LensRequestError` naming the first option that cannot be used."""
        if self.path not in PATHS:
            raise LensRequestError(f"path {self.path!r} is not one of {', '.join(PATHS)}")
        if self.mesh is None and self.shard_weights:
            raise LensRequestError("shard_weights=True needs a mesh= whose `feature` axis splits the weights")
        if self.memory_budget_gb is not None and not self.memory_budget_gb > 0:
            raise LensRequestError(f"memory_budget_gb={self.memory_budget_gb} must be positive")
        for name in ("sequences_per_chunk", "tangent_chunk", "feature_chunk"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise LensRequestError(f"{name}={value} must be a positive integer")
        if (
            isinstance(self.self_check_features, bool)
            or not isinstance(self.self_check_features, (int, np.integer))
            or self.self_check_features < 1
        ):
            raise LensRequestError(f"self_check_features={self.self_check_features} must be a positive integer")


def split_options(
    overrides: dict[str, Any], options: LensOptions, execution: ExecutionOptions
) -> tuple[LensOptions, ExecutionOptions]:
    """`options` and `execution` with the fields named in `overrides` replaced (the keyword
    shorthand of `query_lens`); a name that is in neither raises `TypeError`."""
    lens_names = {f.name for f in fields(LensOptions)}
    execution_names = {f.name for f in fields(ExecutionOptions)}
    unknown = sorted(set(overrides) - lens_names - execution_names)
    if unknown:
        raise TypeError(
            f"unknown option(s) {unknown}; LensOptions has {sorted(lens_names)}, ExecutionOptions has {sorted(execution_names)}"
        )
    options = replace(options, **{n: v for n, v in overrides.items() if n in lens_names})
    execution = replace(execution, **{n: v for n, v in overrides.items() if n in execution_names})
    return options, execution
