"""Test setup: the repository root and `tests/` on sys.path, jaxtyping checks on."""

import os
import sys

_TESTS = os.path.dirname(os.path.abspath(__file__))
_ROOT = os.path.dirname(_TESTS)
for path in (_ROOT, _TESTS):
    if path not in sys.path:
        sys.path.insert(0, path)

import qlens_jax  # noqa: E402,F401  (sets XLA flags before any test touches JAX)
