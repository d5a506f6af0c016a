"""What the benchmarks share beyond machine facts (`benchmarks.machine`), shapes
(`benchmarks.sizes`) and builders (`benchmarks.builders`): isolated measurements with their own
peak memory, saved operators checked against what they were computed from, and output (JSON,
paths as results record them, durations, log lines).

Every measurement that reports a peak memory runs in its own spawned process
(`run_isolated`), so that the number is that measurement's peak and nothing else's: on CPU the
process's maximum resident set size (`getrusage(RUSAGE_SELF).ru_maxrss`), on an accelerator
the device's `memory_stats()["peak_bytes_in_use"]`. The child also reports its resident size
right after setup (model and dictionaries built), so the measured step's own footprint is
`peak - setup`.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
import traceback
from pathlib import Path

from benchmarks.machine import REPO, loadavg, peak_memory

RESULTS = REPO / "benchmarks" / "results"


# ---------------------------------------------------------------------------------------------
# Isolated measurements
# ---------------------------------------------------------------------------------------------


def _child(queue, module: str, name: str, kwargs: dict) -> None:
    try:
        import importlib

        import qlens_jax  # noqa: F401  (XLA flags before JAX starts)

        fn = getattr(importlib.import_module(module), name)
        result = fn(**kwargs)
        result.update(peak_memory())
        queue.put(("ok", result))
    except BaseException:  # report everything, including MemoryError
        queue.put(("error", traceback.format_exc()))


def run_isolated(fn, timeout: float | None = None, **kwargs) -> dict:
    """`fn(**kwargs)` (a module-level function returning a JSON-able dict) in a fresh spawned
    process; the result gains `peak_rss_gb` (and `peak_device_gb` on accelerators) and the load
    averages before and after."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    before = loadavg()
    process = ctx.Process(target=_child, args=(queue, fn.__module__, fn.__name__, kwargs))
    start = time.perf_counter()
    process.start()
    status, payload = None, None
    deadline = None if timeout is None else start + timeout
    while process.is_alive() or not queue.empty():
        try:
            status, payload = queue.get(timeout=1.0)
            break
        except Exception:
            if deadline is not None and time.perf_counter() > deadline:
                process.kill()
                raise TimeoutError(f"{fn.__name__} ran past {timeout} s") from None
    process.join()
    if status is None:
        raise RuntimeError(f"{fn.__name__} died without a result (exit code {process.exitcode}; out of memory?)")
    if status == "error":
        raise RuntimeError(f"{fn.__name__} failed in its subprocess:\n{payload}")
    payload["loadavg_before"] = before
    payload["loadavg_after"] = loadavg()
    payload["process_wall_s"] = round(time.perf_counter() - start, 3)
    return payload


# ---------------------------------------------------------------------------------------------
# Saved operators
# ---------------------------------------------------------------------------------------------


def _operators_identity(hf_overrides: dict, seed: int, tokens, mask) -> dict:
    """What saved benchmark operators depend on: the model config and seed, and the sample."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256(np.ascontiguousarray(tokens).tobytes() + np.ascontiguousarray(mask).tobytes()).hexdigest()
    return {
        "hf": dict(sorted(hf_overrides.items())),
        "seed": seed,
        "sample_sha256": digest,
        "shape": list(tokens.shape),
    }


def save_benchmark_operators(operators, directory, cfg: dict, tokens, mask) -> None:
    """Save dense operators with what they were computed from (`load_benchmark_operators` checks it)."""
    from qlens_jax.lens import save_operators

    save_operators(operators, directory)
    identity = _operators_identity(cfg["hf"], cfg["seed"], tokens, mask)
    (Path(directory) / "benchmark.json").write_text(json.dumps(identity, indent=1))


def load_benchmark_operators(directory, hf_overrides: dict, seed: int, tokens, mask):
    """Operators saved by `save_benchmark_operators`, refused if model or sample differ."""
    from qlens_jax.lens import load_operators

    stored = json.loads((Path(directory) / "benchmark.json").read_text())
    wanted = _operators_identity(hf_overrides, seed, tokens, mask)
    if stored != wanted:
        raise SystemExit(f"--operators {directory}: computed for {stored}, not for this run's {wanted}")
    return load_operators(directory)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def portable_path(path: str | Path | None) -> str | None:
    """How a results file names `path`: relative to the repository when inside it, else by its
    last component with "(outside the repository)": a machine's absolute paths never enter
    committed results."""
    if path is None:
        return None
    resolved = Path(path).expanduser().absolute()
    try:
        return resolved.relative_to(REPO).as_posix()
    except ValueError:
        return f"{resolved.name} (outside the repository)"


def write_json(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def default(o):
        try:
            import numpy as np

            if isinstance(o, np.generic):
                return o.item()
            if isinstance(o, np.ndarray):
                return o.tolist()
        except Exception:
            pass
        return str(o)

    path.write_text(json.dumps(data, indent=1, default=default) + "\n")
    return path


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def log(*args) -> None:
    print(time.strftime("%H:%M:%S"), *args, flush=True)
