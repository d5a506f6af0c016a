"""qlens-jax: Query Lens signatures for every feature of a sparse dictionary at once."""

from qlens_jax import _xla_flags  # noqa: F401  (must run before JAX initializes its backend)
