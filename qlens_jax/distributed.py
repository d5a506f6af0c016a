"""One job over several processes (hosts): joining them, and process 0's decisions shared.

`qlens signatures --distributed` runs the same program on every process (multi-controller
JAX): every process loads the same inputs and takes part in every computation over a mesh
spanning all processes' devices, and only process 0 (the *writer*) touches the output folder.
What the writer reads from it (the run's plan, which shards are left, cached operators) is
broadcast to the others, so hosts need not share a file system; a bad input on any process
stops every process with an error instead of leaving the others waiting in a collective.

In a single process every function here is a no-op pass-through.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TypeVar

import jax
import numpy as np

from qlens_jax.errors import InputError

T = TypeVar("T")

JOIN_HELP = (
    "on Cloud TPU, SLURM, Open MPI and Kubernetes JAX reads the cluster from the environment; elsewhere give "
    "--coordinator HOST:PORT (process 0's address, or set JAX_COORDINATOR_ADDRESS), --num-processes N and "
    "--process-id I on every process"
)


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """`jax.distributed.initialize` (before any JAX computation), errors naming the options."""
    if num_processes is not None and num_processes < 1:
        raise InputError(f"--num-processes {num_processes}: must be at least 1")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise InputError(
            f"--process-id {process_id}: must be in 0..{num_processes - 1} (--num-processes {num_processes})"
        )
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    except (ValueError, TypeError) as err:
        raise InputError(f"--distributed: cannot tell how to join the other processes ({err}); {JOIN_HELP}") from None
    except RuntimeError as err:
        raise InputError(f"--distributed: could not join the other processes ({err}); {JOIN_HELP}") from None


def is_multiprocess() -> bool:
    return jax.process_count() > 1


def is_writer() -> bool:
    """Process 0 writes every output file."""
    return jax.process_index() == 0


def checked(action: Callable[[], T]) -> T:
    """`action()` on this process; if it raised `InputError` on any process, raise on all.

    Without this, a process whose inputs are bad would exit while the others wait for it
    in the next collective until their heartbeat timeout.
    """
    error, result = None, None
    try:
        result = action()
    except InputError as err:
        error = err
    if is_multiprocess():
        from jax.experimental import multihost_utils

        failed = np.asarray(multihost_utils.process_allgather(np.int32(error is not None))).reshape(-1)
        if error is None and failed.any():
            first = int(np.flatnonzero(failed)[0])
            raise InputError(
                f"process {first} stopped on bad input (its own output names it); stopping process {jax.process_index()} too"
            )
    if error is not None:
        raise error
    return result


def share(value: T) -> T:
    """Process 0's `value` (anything JSON can hold) on every process."""
    if not is_multiprocess():
        return value
    from jax.experimental import multihost_utils

    data = json.dumps(value).encode() if is_writer() else b""
    size = int(multihost_utils.broadcast_one_to_all(np.int32(len(data))))
    buffer = np.frombuffer(data, np.uint8) if is_writer() else np.zeros(size, np.uint8)
    return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buffer))))


def share_arrays(arrays: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Process 0's host arrays on every process (the others pass None)."""
    if not is_multiprocess():
        return arrays
    from jax.experimental import multihost_utils

    layout = share({name: [list(a.shape), str(a.dtype)] for name, a in arrays.items()} if is_writer() else None)
    template = arrays if is_writer() else {name: np.zeros(shape, dtype) for name, (shape, dtype) in layout.items()}
    return {name: np.asarray(a) for name, a in multihost_utils.broadcast_one_to_all(template).items()}
