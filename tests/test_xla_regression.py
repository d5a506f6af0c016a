"""docs/definitions.md section 2: XLA's CPU backend (jaxlib 0.10.2) miscompiles jit(vmap(vjp(f))) when a
batched cotangent meets a shared residual and a reduction. qlens_jax sets an XLA flag at import
that avoids it; this minimal repro must stay exact for whatever jaxlib the project pins."""

import os

import jax
import jax.numpy as jnp
import numpy as np

import qlens_jax  # noqa: F401  (sets the flag; conftest imports it before JAX starts)
from qlens_jax._xla_flags import FLAG


def test_flag_is_set_before_jax_starts():
    assert FLAG in os.environ["XLA_FLAGS"]


def test_vmapped_vjp_under_jit_is_exact():
    f = lambda x: x * x.sum(-1, keepdims=True)
    x = jax.random.normal(jax.random.key(0), (16, 32, 64))
    cotangents = jax.random.normal(jax.random.key(1), (8, 16, 32, 64))

    def all_vjps(x, cts):
        _, pull = jax.vjp(f, x)
        return jax.vmap(lambda c: pull(c)[0])(cts)

    got = np.asarray(jax.jit(all_vjps)(x, cotangents))
    want = np.stack([np.asarray(jax.vjp(f, x)[1](c)[0]) for c in cotangents])
    # Exact formula in float64 as a third opinion.
    x64, c64 = np.asarray(x, np.float64), np.asarray(cotangents, np.float64)
    exact = c64 * x64.sum(-1, keepdims=True) + (c64 * x64).sum(-1, keepdims=True)
    assert np.abs(want - exact).max() / np.abs(exact).max() < 1e-5
    assert np.abs(got - exact).max() / np.abs(exact).max() < 1e-5
    assert jnp.isfinite(got).all()
