"""XLA flags set before JAX starts its CPU backend.

XLA's CPU backend in jaxlib 0.10.2 miscompiles `jit(vmap(vjp(f)))` when a batched cotangent
is multiplied by a shared residual and then reduced (every batch entry gets batch 0's sum;
see DESIGN.md section 2). Disabling the YNN reduce fusion makes it exact. The flag is only
appended when the user has not set it, and only has an effect if JAX's backend has not been
initialized yet (import qlens_jax before running JAX computations). `tests/test_xla_regression.py`
keeps the minimal repro as a regression test.
"""

import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"

if "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FLAG).strip()
