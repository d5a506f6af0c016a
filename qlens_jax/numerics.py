"""Number formats: what arrays are stored in (`dtype`) and how matrix products compute (`precision`).

Two separate choices (docs/definitions.md section 2b):

- `dtype` ("float32" or "bfloat16", `DTYPES`, `cast_model`): the format the model's
  parameters, and so its activations and tangents, are stored in. Norms, softmax, means,
  readouts and top-k stay float32 either way.
- `precision` ("float32", "tf32" or "bfloat16", `PRECISIONS`, `matmul_precision`): how every
  matrix product multiplies. JAX's default for float32 products is fast, not exact (TF32 on
  recent NVIDIA GPUs, bfloat16 passes on TPUs), so qlens-jax never leaves it to the backend:

  - "float32": `Precision.HIGHEST`, true float32 products on every backend (the reference's
    numbers; on CPU the products are float32 anyway, so results are unchanged there);
  - "tf32": the `TF32_TF32_F32` dot algorithm (10-bit mantissa inputs, float32 accumulation),
    NVIDIA GPUs only;
  - "bfloat16": the `BF16_BF16_F32` dot algorithm (bfloat16 inputs, float32 accumulation), on
    GPUs and TPUs. XLA's CPU backend accepts that algorithm but ignores it (it multiplies in
    float32, checked against explicitly rounded inputs with jaxlib 0.10.2), so on CPU the mode
    is refused rather than reported for numbers it did not produce.

How they combine: `precision` governs products whose inputs are float32. With
`dtype="bfloat16"` the inputs of most products are already bfloat16 and multiply exactly as
bfloat16 numbers, accumulated in float32 where the code asks for a float32 result, whatever the
precision ("float32" keeps them so; "tf32" and "bfloat16" do not round them further). So
`dtype="bfloat16"` halves memory and `precision` trades the remaining float32 products for
speed; `dtype="float32", precision="float32"` is the reference.

The mechanism: `matmul_precision(mode)` sets `jax.default_matmul_precision` while code is traced.
`lax.dot_general` turns its `precision=None` into that setting when it is called (trace time),
so every dot in the traced program carries it, transposes and linearizations included, and
the setting is part of `jit`'s cache key (a program traced under one mode is never reused under
another). Entry points take `precision=` and apply it with `applies_precision`; no code in the
package passes an explicit `precision=` to a product (tests/accelerators check both).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp

from qlens_jax.errors import InputError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
PRECISIONS = ("float32", "tf32", "bfloat16")
# What each mode sets as JAX's default matmul precision.
SETTINGS = {"float32": "highest", "tf32": "TF32_TF32_F32", "bfloat16": "BF16_BF16_F32"}
# Backends (`jax.default_backend()` names) that honour each mode; None: every backend.
BACKENDS: dict[str, tuple[str, ...] | None] = {
    "float32": None,
    "tf32": ("gpu", "cuda"),
    "bfloat16": ("gpu", "cuda", "rocm", "tpu"),
}
WHY_NOT = {
    "tf32": "tf32 needs a GPU: TensorFloat-32 is a feature of NVIDIA tensor cores",
    "bfloat16": "XLA's CPU backend ignores the bfloat16 dot algorithm and would multiply in float32; "
    "use dtype='bfloat16' to store (and multiply) the arrays in bfloat16 there",
}

_active = threading.local()


class PrecisionError(InputError):
    """A precision mode (or dtype) that is unknown, or that the backend cannot honour."""


def check_precision(mode: str, backend: str | None = None) -> str:
    """`mode` if it is a known precision that `backend` (default: JAX's default backend)
    honours; otherwise a `PrecisionError` naming the mode and the backend."""
    if mode not in PRECISIONS:
        raise PrecisionError(f"precision {mode!r} is not supported; choose from {', '.join(PRECISIONS)}")
    backend = backend or jax.default_backend()
    allowed = BACKENDS[mode]
    if allowed is not None and backend not in allowed:
        raise PrecisionError(
            f"precision {mode!r} is unavailable on the {backend} backend ({WHY_NOT[mode]}); use precision='float32'"
        )
    return mode


def check_dtype(dtype: str) -> str:
    """`dtype` if it is a storage format of `DTYPES`, else a `PrecisionError` naming it."""
    if dtype not in DTYPES:
        raise PrecisionError(f"dtype {dtype!r} is not supported; choose from {', '.join(DTYPES)}")
    return dtype


def active_precision() -> str | None:
    """The mode of the innermost `matmul_precision` block on this thread (None outside any)."""
    return getattr(_active, "mode", None)


@contextlib.contextmanager
def matmul_precision(mode: str, backend: str | None = None) -> Iterator[str]:
    """Every matrix product traced inside runs at precision `mode` (see the module docstring)."""
    check_precision(mode, backend)
    outer = active_precision()
    _active.mode = mode
    try:
        with jax.default_matmul_precision(SETTINGS[mode]):
            yield mode
    finally:
        _active.mode = outer


def applies_precision(fn: Callable) -> Callable:
    """Decorate an entry point that has a `precision` parameter: its body runs under
    `matmul_precision(precision)`. Called without `precision` inside another entry point's
    block, it keeps that block's mode (a `query_lens(precision="bfloat16")` does not fall back
    to float32 in the `transport_operators` it calls)."""
    signature = inspect.signature(fn)
    if "precision" not in signature.parameters:
        raise TypeError(f"{fn.__qualname__} has no `precision` parameter")
    default = signature.parameters["precision"].default

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        given = signature.bind_partial(*args, **kwargs).arguments.get("precision")
        mode = given or active_precision() or default
        with matmul_precision(mode):
            return fn(*args, **kwargs)

    return wrapper


ModelT = TypeVar("ModelT", bound=eqx.Module)


def cast_model(model: ModelT, dtype: str) -> ModelT:
    """The model with floating-point parameters stored in `dtype` (its `meta`, per-layer
    metadata such as RoPE bases, stays float32)."""
    target = DTYPES[check_dtype(dtype)]
    meta = model.meta
    cast = jax.tree.map(lambda x: x.astype(target) if eqx.is_inexact_array(x) else x, model)
    return eqx.tree_at(lambda m: m.meta, cast, meta)
