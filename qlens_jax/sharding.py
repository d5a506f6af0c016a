"""Device meshes and shardings: one table from logical axes to mesh axes.

The mesh has two axes (DESIGN.md section 4):

- `data`: token-sample chunks. Each device linearizes its own chunk; operator contributions
  are summed across the axis (`psum`).
- `feature`: basis vectors of the dense sweeps (independent of each other) and, for the
  readout, feature chunks (scores and top-k are per feature, so no communication).

Weights are replicated. The same code runs on one CPU (a 1 x 1 mesh), several local devices
and several hosts (`jax.distributed.initialize()` first; the mesh spans all processes).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "feature")

# Logical axis -> mesh axes. Every PartitionSpec below is derived from this table.
LOGICAL = {
    "batch": "data",  # token-chunk sequences in the sweeps
    "basis": "feature",  # basis tangents/cotangents of the dense sweeps
    "features": ("data", "feature"),  # feature rows in the readout: every device
    "replicated": None,
}


def spec(*logical: str | None) -> P:
    """A PartitionSpec from logical axis names (None: not sharded)."""
    return P(*(LOGICAL[name] if name is not None else None for name in logical))


def make_mesh(shape: tuple[int, int] | None = None, devices=None) -> Mesh:
    """A `(data, feature)` mesh over `devices` (default: all, across processes).

    The default shape puts every device on `data` (token chunks dominate the sweeps);
    pass e.g. `(2, 4)` to also split the sweeps' basis vectors over 4 devices.
    """
    devices = list(devices if devices is not None else jax.devices())
    if shape is None:
        shape = (len(devices), 1)
    if math.prod(shape) != len(devices):
        raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices, {len(devices)} available")
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def axis_size(mesh: Mesh, logical: str) -> int:
    axes = LOGICAL[logical]
    axes = (axes,) if isinstance(axes, str) else (axes or ())
    return math.prod(mesh.shape[a] for a in axes)


def put(array, mesh: Mesh, *logical: str | None) -> jax.Array:
    """Place a host array (identical on every process) with the sharding of `logical` axes."""
    sharding = NamedSharding(mesh, spec(*logical))
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def replicate(tree, mesh: Mesh):
    """Every array leaf of `tree` replicated over the mesh."""
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.device_put(x, sharding) if isinstance(x, jax.Array) else x, tree)


def to_host(array) -> np.ndarray:
    """A (possibly multi-host) global array as a numpy array on this process."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)
