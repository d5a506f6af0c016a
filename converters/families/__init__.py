"""The model families the converter supports: one file per family, each registering a
`FamilySpec` (docs/adding-a-model.md).

`family(model_type)` gives a family's spec; `wrapped_family(model_type)` the spec of the
language model of a multimodal wrapper. Adding a family is one file here, one import line
below, and its test entries.
"""

from __future__ import annotations

from converters.errors import UnsupportedOptionError
from converters.families import (  # noqa: F401  (registers them)
    gemma,
    gemma2,
    gemma3,
    gpt2,
    gpt_neox,
    gpt_oss,
    llama,
    mistral,
    qwen2,
    qwen3,
    qwen3_5,  # noqa: F401
    qwen3_moe,  # noqa: F401
)
from converters.families.spec import COMMON_INERT_KEYS, REGISTRY, FamilySpec, register


def supported_model_types() -> tuple[str, ...]:
    """Every `model_type` the converter takes: the families and the multimodal wrappers."""
    wrappers = tuple(spec.wrapper for spec in REGISTRY.values() if spec.wrapper)
    return tuple(REGISTRY) + wrappers


def wrapped_family(model_type: str | None) -> FamilySpec | None:
    """The family whose multimodal wrapper is `model_type` (None: not a wrapper)."""
    return next((spec for spec in REGISTRY.values() if spec.wrapper and spec.wrapper == model_type), None)


def family(model_type: str | None) -> FamilySpec:
    """The spec of `model_type`; `UnsupportedOptionError` naming it and the supported ones."""
    if model_type not in REGISTRY:
        raise UnsupportedOptionError(
            f"unknown model_type {model_type!r} (supported: {', '.join(supported_model_types())})"
        )
    return REGISTRY[model_type]


__all__ = [
    "COMMON_INERT_KEYS",
    "FamilySpec",
    "REGISTRY",
    "family",
    "register",
    "supported_model_types",
    "wrapped_family",
]
