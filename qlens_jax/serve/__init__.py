"""`qlens serve` / `qlens search`: browse and search runs of any size, and the reverse lookup
(which features promote, or respond to, a token; DESIGN.md section 8)."""

from qlens_jax.serve.reverse import ReverseHit, ReverseLookup, reverse_lookup

__all__ = ["ReverseHit", "ReverseLookup", "reverse_lookup"]
