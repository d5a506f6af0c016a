"""Device meshes and shardings: one table from logical axes to mesh axes.

The mesh has two axes (docs/definitions.md section 4):

- `data`: token-sample chunks. Each device linearizes its own chunk; operator contributions
  are summed across the axis (`psum`).
- `feature`: basis vectors of the dense sweeps (independent of each other) and, for the
  readout, feature chunks (scores and top-k are per feature, so no communication).

Weights are replicated, or, when they do not fit one device (`should_shard_weights`), sharded
by `shard_weights`: the vocabulary rows of the embedding and unembedding and the MLP hidden
units split over `feature` (the sweeps then run as GSPMD programs and the readout merges
per-shard top-k lists). The same code runs on one CPU (a 1 x 1 mesh), several local devices
and several hosts (`jax.distributed.initialize()` first; the mesh spans all processes).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from qlens_jax.errors import InputError
from qlens_jax.models import Transformer

AXES = ("data", "feature")

# Logical axis -> mesh axes. Every PartitionSpec and NamedSharding in qlens_jax is derived
# from this table (`spec`, `named`, `shardings`, `mesh_axes`).
LOGICAL = {
    "batch": "data",  # token-chunk sequences in the sweeps
    "basis": "feature",  # basis tangents/cotangents of the dense sweeps
    "features": ("data", "feature"),  # feature rows in the readout: every device
    "vocab": "feature",  # vocabulary rows of the embedding / unembedding (sharded weights)
    "mlp": "feature",  # MLP hidden units (sharded weights)
    "vocab_features": "data",  # feature rows in the readout when `vocab` splits the rest
    "replicated": None,
}

# Model weight (path in the `Transformer` tree) -> logical axes, for `shard_weights`; every
# other weight is replicated. Stacked block weights lead with the layer axis; vocabulary rows
# come first.
WEIGHT_AXES = {
    "embed_tokens": ("vocab", None),
    "lm_head": ("vocab", None),
    "blocks.mlp.up_proj.weight": (None, None, "mlp"),
    "blocks.mlp.up_proj.bias": (None, "mlp"),
    "blocks.mlp.gate_proj.weight": (None, None, "mlp"),
    "blocks.mlp.gate_proj.bias": (None, "mlp"),
    "blocks.mlp.down_proj.weight": (None, "mlp", None),
}


def spec(*logical: str | None) -> P:
    """A PartitionSpec from logical axis names (None: not sharded; no names: replicated)."""
    return P(*(LOGICAL[name] if name is not None else None for name in logical))


def named(mesh: Mesh, *logical: str | None) -> NamedSharding:
    """The NamedSharding on `mesh` of an array whose axes are the `logical` ones (`spec`)."""
    return NamedSharding(mesh, spec(*logical))


def shardings(mesh: Mesh, specs):
    """A tree of PartitionSpecs (made by `spec`) as NamedShardings on `mesh`."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def mesh_axes(logical: str) -> str | tuple[str, ...] | None:
    """The mesh axis (or axes) a logical axis is split over: the name collectives reduce over."""
    return LOGICAL[logical]


def make_mesh(shape: tuple[int, int] | None = None, devices=None) -> Mesh:
    """A `(data, feature)` mesh over `devices` (default: all, across processes).

    The default shape puts every device on `data` (token chunks dominate the sweeps);
    pass e.g. `(2, 4)` to also split the sweeps' basis vectors over 4 devices.
    """
    devices = list(devices if devices is not None else jax.devices())
    if shape is None:
        shape = (len(devices), 1)
    if math.prod(shape) != len(devices):
        raise InputError(f"mesh shape {shape} needs {math.prod(shape)} devices, {len(devices)} available")
    return Mesh(np.asarray(devices).reshape(shape), AXES)


def axis_size(mesh: Mesh, logical: str) -> int:
    """Number of devices the logical axis is split over on `mesh`."""
    axes = LOGICAL[logical]
    axes = (axes,) if isinstance(axes, str) else (axes or ())
    return math.prod(mesh.shape[a] for a in axes)


def put(array, mesh: Mesh, *logical: str | None) -> jax.Array:
    """Place a host array (identical on every process) with the sharding of `logical` axes."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, named(mesh, *logical), lambda index: array[index])


def replicate(tree, mesh: Mesh):
    """Every array leaf of `tree` replicated over the mesh."""
    everywhere = named(mesh)
    return jax.tree.map(lambda x: jax.device_put(x, everywhere) if isinstance(x, jax.Array) else x, tree)


def weight_bytes(model: Transformer) -> int:
    """Bytes of every array in `model` (its weights, as stored: a bfloat16 cast halves them)."""
    return sum(x.nbytes for x in jax.tree.leaves(model) if eqx.is_array(x))


def should_shard_weights(model: Transformer, mesh: Mesh, free_gb: float | None = None, fraction: float = 0.5) -> bool:
    """Whether `shard_weights` should split the model: its weights take more than `fraction`
    of one device's free memory (`free_gb`, default measured), leaving too little for the
    sweeps' linearizations, and the mesh has a `vocab` axis to split them over."""
    if axis_size(mesh, "vocab") == 1:
        return False
    if free_gb is None:
        from qlens_jax import memory

        free_gb = memory.available_memory_gb(memory.planning_device(mesh))
    return weight_bytes(model) > fraction * free_gb * 2**30


def vocab_sharded(model: Transformer) -> bool:
    """Whether `model`'s (un)embedding is split over several devices (placed by `shard_weights`)."""
    matrix = model.embed_tokens if model.lm_head is None else model.lm_head
    sharding = getattr(matrix, "sharding", None)
    return isinstance(sharding, NamedSharding) and not sharding.is_fully_replicated


def _pad_rows(x, multiple: int) -> np.ndarray:
    """`x` on the host with zero rows appended up to a multiple of `multiple`."""
    x = np.asarray(x)
    missing = -x.shape[0] % multiple
    return np.concatenate([x, np.zeros((missing, *x.shape[1:]), x.dtype)]) if missing else x


def _weight_axes(path: str, x, mesh: Mesh) -> tuple[str | None, ...]:
    """Logical axes of one weight: its `WEIGHT_AXES` entry where the mesh divides the sharded
    axes (vocabulary matrices are padded so that it always does), else replicated."""
    axes = WEIGHT_AXES.get(path, ())
    if any(name and x.shape[i] % axis_size(mesh, name) for i, name in enumerate(axes)):
        return ()
    return axes


def shard_weights(model: Transformer, mesh: Mesh) -> Transformer:
    """`model` with its large weights split over the mesh (`WEIGHT_AXES`), the rest replicated.

    Each device then holds `vocab / n` rows of the embedding and unembedding and `d_mlp / n`
    MLP hidden units, `n` the size of the `feature` axis. So that `n` divides them, the
    vocabulary matrices get zero rows past `config.vocab_size`: token ids never reach them and
    readouts ignore their scores. Each device receives its slices from the host (a model loaded
    on one device keeps its copy there: load it to the host for models that do not fit);
    placing an already sharded model again changes nothing.
    """
    n_vocab = axis_size(mesh, "vocab")

    def place(path, x):
        if not eqx.is_array(x):
            return x
        name = jax.tree_util.keystr(path, simple=True, separator=".")
        if WEIGHT_AXES.get(name, (None,))[0] == "vocab" and x.shape[0] % n_vocab:
            x = _pad_rows(x, n_vocab)
        axes = _weight_axes(name, x, mesh)
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(named(mesh, *axes), x.ndim):
            return x
        return put(x, mesh, *axes)

    return jax.tree_util.tree_map_with_path(place, model)


def place_weights(model: Transformer, mesh: Mesh, shard: bool | None = None) -> Transformer:
    """`model` on the mesh: sharded (`shard=True`), replicated (`False`), or as
    `should_shard_weights` decides (`None`)."""
    if shard is None:
        shard = should_shard_weights(model, mesh)
    return shard_weights(model, mesh) if shard else replicate(model, mesh)


def to_host(array) -> np.ndarray:
    """A (possibly multi-host) global array as a numpy array on this process."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)
