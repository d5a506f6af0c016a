"""The Query Lens kernel: transports, dense operators, readouts and the `query_lens` API."""

from qlens_jax.lens.api import SelfCheckError, cast_model, query_lens
from qlens_jax.lens.chunks import ChunkPlan, plan_chunks
from qlens_jax.lens.operators import TransportOperators, load_operators, save_operators, transport_operators
from qlens_jax.lens.signatures import DEFAULT_LENSES, LENSES, Signatures, SignatureTable
from qlens_jax.lens.validation import LensRequestError

__all__ = [
    "ChunkPlan",
    "DEFAULT_LENSES",
    "LENSES",
    "LensRequestError",
    "SelfCheckError",
    "SignatureTable",
    "Signatures",
    "TransportOperators",
    "cast_model",
    "load_operators",
    "plan_chunks",
    "query_lens",
    "save_operators",
    "transport_operators",
]
