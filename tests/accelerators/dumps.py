"""Every StableHLO module JAX lowers while a block runs, and the precision of each of its dots."""

from __future__ import annotations

import contextlib
from pathlib import Path

import jax

# What each precision mode must put on every dot_general (numerics.SETTINGS).
EXPECTED = {
    "float32": "precision = [HIGHEST, HIGHEST]",
    "tf32": "algorithm = <lhs_precision_type = tf32, rhs_precision_type = tf32, accumulation_type = f32",
    "bfloat16": "algorithm = <lhs_precision_type = bf16, rhs_precision_type = bf16, accumulation_type = f32",
}


@contextlib.contextmanager
def dumped_modules(directory: Path):
    """Dump every module lowered inside the block to `directory` (jit caches cleared first, so
    that nothing compiled earlier in the session is reused without being lowered again)."""
    jax.clear_caches()
    jax.config.update("jax_dump_ir_to", str(directory))
    try:
        yield directory
    finally:
        jax.config.update("jax_dump_ir_to", "")


def dots_by_module(directory: Path) -> dict[str, list[str]]:
    """`{dump file name: [every dot line]}` for the dumped modules that hold dots (file names
    read `jax_ir<n>_<module>_compile.mlir`)."""
    out = {}
    for path in sorted(directory.glob("*.mlir")):
        lines = [line.strip() for line in path.read_text().splitlines() if "stablehlo.dot" in line]
        if lines:
            out[path.name] = lines
    return out


def off_policy(dots: dict[str, list[str]], mode: str) -> list[str]:
    """Dots (module: line) that do not carry `mode`'s precision."""
    return [f"{name}: {line[:160]}" for name, lines in dots.items() for line in lines if EXPECTED[mode] not in line]
