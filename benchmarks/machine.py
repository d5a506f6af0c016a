"""Facts about the machine a benchmark runs on, and the measurements every benchmark takes of it:
CPU, memory, device and package versions, the code's commit, load, resident and peak memory,
wall time of a JAX call, and the device's measured float32 matmul peak.

    python -m benchmarks.machine          # the facts and the matmul peak, as JSON
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def loadavg() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = line.split(":", 1)[1].split()
                    return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def _mem_total_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def package_version(name: str) -> str | None:
    """The installed version of package `name`, or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git() -> dict:
    def run(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except Exception:
            return ""

    commit = run("rev-parse", "HEAD")
    if not commit and (REPO / ".bench_commit").exists():  # an exported snapshot (git archive) of a commit
        return {"commit": (REPO / ".bench_commit").read_text().strip(), "snapshot": "an exported copy of the commit"}
    return {"commit": commit, "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def device_info() -> dict:
    """The default JAX device (imports qlens_jax first so that its XLA flags apply)."""
    import jax

    import qlens_jax  # noqa: F401  (XLA flags first)

    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "kind": getattr(device, "device_kind", device.platform),
        "count": jax.device_count(),
    }


def device_slug() -> str:
    info = device_info()
    if info["platform"] == "cpu":
        return "cpu"
    return info["kind"].lower().replace(" ", "-")


def machine_info() -> dict:
    return {
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "memory_gb": _mem_total_gb(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": device_info(),
        "versions": {n: package_version(n) for n in ("jax", "jaxlib", "equinox", "numpy", "torch", "transformers")},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "git": _git(),
        "loadavg_at_start": loadavg(),
    }


# ---------------------------------------------------------------------------------------------
# Memory
# ---------------------------------------------------------------------------------------------


def current_rss_gb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def peak_memory() -> dict:
    """Peak memory of this process: host maximum RSS, and the accelerator's peak if any."""
    out = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}
    try:
        import jax

        device = jax.devices()[0]
        if device.platform != "cpu":
            stats = device.memory_stats() or {}
            if "peak_bytes_in_use" in stats:
                out["peak_device_gb"] = round(stats["peak_bytes_in_use"] / 2**30, 3)
    except Exception:
        pass
    return out


# ---------------------------------------------------------------------------------------------
# Timing and the matmul peak
# ---------------------------------------------------------------------------------------------


def block(x):
    import jax

    return jax.block_until_ready(x)


def timed(fn, *args, **kwargs):
    """(result, seconds), waiting for JAX arrays in the result."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    try:
        block(result)
    except Exception:
        pass
    return result, time.perf_counter() - start


def matmul_peak(n: int = 4096, repeats: int = 3, dtype: str = "float32") -> dict:
    """Best-of-`repeats` FLOP/s of one `n x n @ n x n` jnp.matmul on the default device."""
    import jax
    import jax.numpy as jnp

    import qlens_jax  # noqa: F401  (XLA flags first)

    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    f = jax.jit(jnp.matmul)
    block(f(a, b))
    times = []
    for _ in range(repeats):
        _, t = timed(f, a, b)
        times.append(t)
    return {
        "n": n,
        "dtype": dtype,
        "times_s": [round(t, 4) for t in times],
        "flops_per_s": 2 * n**3 / min(times),
        "loadavg": loadavg(),
    }


if __name__ == "__main__":
    print(json.dumps({"machine": machine_info(), "matmul": matmul_peak()}, indent=1))
