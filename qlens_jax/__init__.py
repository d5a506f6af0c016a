"""qlens-jax: Query Lens signatures for every feature of a sparse dictionary at once."""

from qlens_jax import _xla_flags  # noqa: F401  (must run before JAX initializes its backend)
from qlens_jax.lens import (  # noqa: E402
    DEFAULT_LENSES,
    LENSES,
    ExecutionOptions,
    LensOptions,
    LensPlan,
    LensRequestError,
    SelfCheckError,
    Signatures,
    SignatureTable,
    TransportOperators,
    load_operators,
    plan_request,
    query_lens,
    read_signatures,
    save_operators,
    transport_operators,
    transport_operators_for,
)

__all__ = [
    "DEFAULT_LENSES",
    "ExecutionOptions",
    "LENSES",
    "LensOptions",
    "LensPlan",
    "LensRequestError",
    "SelfCheckError",
    "SignatureTable",
    "Signatures",
    "TransportOperators",
    "load_operators",
    "plan_request",
    "query_lens",
    "read_signatures",
    "save_operators",
    "transport_operators",
    "transport_operators_for",
]
