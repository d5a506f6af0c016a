"""`qlens serve` / `qlens search`: browse and search runs of any size, and the reverse lookup
(which features promote, or respond to, a token; docs/definitions.md section 8).

The names below are imported on first use, so that `qlens_jax.serve.cli` (imported by the
command line for every command) does not pull in JAX.
"""

__all__ = ["ReverseHit", "ReverseLookup", "reverse_lookup"]


def __getattr__(name: str):
    if name in __all__:
        from qlens_jax.serve import reverse

        return getattr(reverse, name)
    raise AttributeError(f"module 'qlens_jax.serve' has no attribute {name!r}")
