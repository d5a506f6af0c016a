"""XLA flags set before JAX starts its CPU backend.

XLA's CPU backend in jaxlib 0.10.2 miscompiles `jit(vmap(vjp(f)))` when a batched cotangent
is multiplied by a shared residual and then reduced (every batch entry gets batch 0's sum;
see docs/definitions.md section 2). Disabling the YNN reduce fusion makes it exact. The flag is only
appended when the user has not set it, and only has an effect if JAX's backend has not been
initialized yet (import qlens_jax before running JAX computations). `tests/test_xla_regression.py`
keeps the minimal repro as a regression test.

The flag is CPU-only: it is set only when the CPU will be JAX's backend, i.e. `JAX_PLATFORMS`
names `cpu` first, or it is unset and no GPU or TPU plugin is installed. On an accelerator
machine XLA may not know a CPU flag of another jaxlib, and an unknown flag aborts the process.
"""

import importlib.util
import os

FLAG = "--xla_cpu_experimental_ynn_fusion_type=-reduce"
# Packages whose presence makes JAX prefer a GPU or TPU backend over the CPU.
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")


def cpu_is_the_backend() -> bool:
    """Whether JAX will compute on the CPU (decided without starting JAX)."""
    platforms = os.environ.get("JAX_PLATFORMS") or os.environ.get("JAX_PLATFORM_NAME") or ""
    if platforms.strip():
        return platforms.split(",")[0].strip().lower() == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in ACCELERATOR_PLUGINS)


if cpu_is_the_backend() and "xla_cpu_experimental_ynn_fusion_type" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + FLAG).strip()
