"""How much memory a computation may use, read from the device it runs on.

Every planner (token and tangent chunks, block-major sweep steps, readout feature chunks)
sizes its work from `default_budget_gb(device)`: on a GPU or TPU the device's own free memory
(`device.memory_stats()`: `bytes_limit - bytes_in_use`), on CPU the host's available memory,
never the host's for an accelerator (docs/definitions.md section 2b). `QLENS_MEMORY_BUDGET_GB` or an
explicit `memory_budget_gb=` overrides it.

The backend also picks the form of the tangent loops: the sweeps map their linear maps with
`lax.map(..., batch_size=tangent_chunk)`, which is `vmap` over chunks of `tangent_chunk`
tangents, one chunk after another. `tangent_chunk_for` makes that one tangent at a time on CPU
(a sequential map beats `vmap` there and avoids the XLA CPU miscompile, docs/definitions.md section 2)
and chunks as large as the device's memory allows on GPUs and TPUs.
"""

from __future__ import annotations

import os

import jax
from jax.sharding import Mesh

DEFAULT_CPU_BUDGET_GB = 8.0
# Shares of free memory a job plans with: the host runs other things too; an accelerator's
# memory is the job's own, but XLA needs headroom for temporaries.
CPU_SHARE, ACCELERATOR_SHARE = 0.5, 0.6


def default_device():
    """The device JAX computes on when nothing else is said (`jax.devices()[0]`)."""
    return jax.devices()[0]


def planning_device(mesh: Mesh | None = None):
    """The device whose memory a job plans with: the first device of `mesh` (budgets are per
    device; a mesh holds one kind) or, without a mesh, `default_device()`."""
    return default_device() if mesh is None else mesh.devices.flat[0]


def is_cpu(device=None) -> bool:
    """Whether `device` (default: `default_device()`) is a CPU."""
    return (device or default_device()).platform == "cpu"


def host_available_gb() -> float:
    """The host's available memory (`MemAvailable`), or `DEFAULT_CPU_BUDGET_GB` when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return DEFAULT_CPU_BUDGET_GB


def available_memory_gb(device=None) -> float:
    """Free memory of `device` (default: `default_device()`) in GiB: `bytes_limit -
    bytes_in_use` from an accelerator's `memory_stats()`, the host's available memory on CPU
    (or for a backend that reports no statistics)."""
    device = device or default_device()
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        if limit:
            return (limit - stats.get("bytes_in_use", 0)) / 2**30
    return host_available_gb()


def default_budget_gb(device=None) -> float:
    """The memory a job plans with on `device` (GiB): `QLENS_MEMORY_BUDGET_GB` if set; on CPU
    half the host's available memory, at most `DEFAULT_CPU_BUDGET_GB`; on an accelerator 60 %
    of its free memory."""
    env = os.environ.get("QLENS_MEMORY_BUDGET_GB")
    if env:
        return float(env)
    device = device or default_device()
    free = available_memory_gb(device)
    if device.platform == "cpu":
        return min(DEFAULT_CPU_BUDGET_GB, CPU_SHARE * free)
    return ACCELERATOR_SHARE * free


def budget_bytes(memory_budget_gb: int | float | None, device=None) -> float:
    """`memory_budget_gb` (or `default_budget_gb(device)` when None) in bytes."""
    return (memory_budget_gb or default_budget_gb(device)) * 2**30


def tangent_chunk_for(device, budget: float, bytes_per_tangent: int | float, most: int) -> int:
    """Tangents mapped at once (`lax.map`'s `batch_size`): 1 on CPU (a sequential map), else
    as many as fit `budget` bytes at `bytes_per_tangent` each, between 1 and `most`."""
    if is_cpu(device):
        return 1
    return int(max(1, min(most, budget // bytes_per_tangent)))
