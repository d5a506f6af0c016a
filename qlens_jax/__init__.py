"""qlens-jax: Query Lens signatures for every feature of a sparse dictionary at once."""

from qlens_jax import _xla_flags  # noqa: F401  (must run before JAX initializes its backend)

from qlens_jax.lens import (  # noqa: E402
    DEFAULT_LENSES,
    LENSES,
    LensRequestError,
    SelfCheckError,
    Signatures,
    SignatureTable,
    TransportOperators,
    load_operators,
    query_lens,
    save_operators,
    transport_operators,
)

__all__ = [
    "DEFAULT_LENSES",
    "LENSES",
    "LensRequestError",
    "SelfCheckError",
    "SignatureTable",
    "Signatures",
    "TransportOperators",
    "load_operators",
    "query_lens",
    "save_operators",
    "transport_operators",
]
