"""The Query Lens kernel: residual points, transports, dense operators, first order, and the staged `query_lens` API (readouts live in `qlens_jax.readout`)."""

from qlens_jax.errors import SelfCheckError
from qlens_jax.lens.api import check_operators, query_lens, read_signatures, transport_operators_for
from qlens_jax.lens.chunks import ChunkPlan, plan_chunks
from qlens_jax.lens.operators import TransportOperators, load_operators, save_operators, transport_operators
from qlens_jax.lens.options import ExecutionOptions, LensOptions
from qlens_jax.lens.plan import LensPlan, plan_request
from qlens_jax.lens.signatures import DEFAULT_LENSES, LENSES, Signatures, SignatureTable
from qlens_jax.lens.validation import LensRequestError

__all__ = [
    "ChunkPlan",
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
    "check_operators",
    "load_operators",
    "plan_chunks",
    "plan_request",
    "query_lens",
    "read_signatures",
    "save_operators",
    "transport_operators",
    "transport_operators_for",
]
