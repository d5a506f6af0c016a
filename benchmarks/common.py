"""Shared pieces of the benchmarks: machine and version info, isolated measurements with peak
memory, the device's measured matmul peak, model / dictionary / token-sample builders, JSON.

Every measurement that reports a peak memory runs in its own spawned process
(`run_isolated`), so that the number is that measurement's peak and nothing else's: on CPU the
process's maximum resident set size (`getrusage(RUSAGE_SELF).ru_maxrss`), on an accelerator
the device's `memory_stats()["peak_bytes_in_use"]`. The child also reports its resident size
right after setup (model and dictionaries built), so the measured step's own footprint is
`peak - setup`.
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import platform
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


# ---------------------------------------------------------------------------------------------
# Machine, device, versions
# ---------------------------------------------------------------------------------------------


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
        return {"commit": (REPO / ".bench_commit").read_text().strip(), "snapshot": str(REPO)}
    return {"commit": commit, "dirty": bool(run("status", "--porcelain", "--untracked-files=no"))}


def device_info() -> dict:
    """The default JAX device (imports qlens_jax first so that its XLA flags apply)."""
    import qlens_jax  # noqa: F401  (XLA flags first)
    import jax

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
# Memory and isolated measurements
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


def _child(queue, module: str, name: str, kwargs: dict) -> None:
    try:
        import qlens_jax  # noqa: F401  (XLA flags before JAX starts)
        import importlib

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
# Timing helpers
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
    import qlens_jax  # noqa: F401  (XLA flags first)
    import jax
    import jax.numpy as jnp

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


def _operators_identity(hf_overrides: dict, seed: int, tokens, mask) -> dict:
    """What saved benchmark operators depend on: the model config and seed, and the sample."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256(np.ascontiguousarray(tokens).tobytes() + np.ascontiguousarray(mask).tobytes()).hexdigest()
    return {"hf": dict(sorted(hf_overrides.items())), "seed": seed, "sample_sha256": digest, "shape": list(tokens.shape)}


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
# Models, dictionaries, token samples
# ---------------------------------------------------------------------------------------------

GPT2_SMALL: dict = {}  # transformers.GPT2Config() defaults: 12 layers, d_model 768, vocab 50257
GPT2_TINY = dict(n_embd=64, n_layer=4, n_head=4, vocab_size=2048, n_positions=128)


def hf_gpt2(overrides: dict, seed: int):
    """A randomly initialised `GPT2LMHeadModel` (float32, eval mode, eager attention)."""
    import torch
    import transformers

    torch.manual_seed(seed)
    config = transformers.GPT2Config(**overrides)
    config._attn_implementation = "eager"
    model = transformers.GPT2LMHeadModel(config).eval()
    return model


# Random-weight stand-ins in the shapes of modern models (`hf_model` builds them): the
# published configurations of Llama-3.2-1B and Gemma-3-1B (grouped-query attention; Gemma's
# five sliding-window layers to one global), without Llama's long-context RoPE scaling.
LLAMA_1B = dict(family="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5,
                max_position_embeddings=8192, tie_word_embeddings=True)
GEMMA3_1B = dict(family="gemma3", hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=256, vocab_size=262144, query_pre_attn_scalar=256, sliding_window=512,
                 rope_theta=1000000.0, rope_local_base_freq=10000.0, rms_norm_eps=1e-6, max_position_embeddings=32768,
                 tie_word_embeddings=True)
# The same families at test size (a window shorter than the tiny sample, so it matters).
LLAMA_TINY = dict(LLAMA_1B, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, vocab_size=512)
GEMMA3_TINY = dict(GEMMA3_1B, hidden_size=64, intermediate_size=128, num_hidden_layers=7, num_attention_heads=4,
                   num_key_value_heads=1, head_dim=16, vocab_size=512, query_pre_attn_scalar=16, sliding_window=8)


def gemma3_layer_types(n_layers: int) -> list[str]:
    """Gemma-3's pattern: every sixth layer global, the others sliding-window."""
    return ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n_layers)]


def hf_config(spec: dict):
    """The `transformers` config of a size's `hf` entry (GPT-2 when it names no family)."""
    import transformers

    spec = dict(spec)
    family = spec.pop("family", "gpt2")
    if family == "gpt2":
        return transformers.GPT2Config(**spec)
    if family == "llama":
        theta = spec.pop("rope_theta")
        return transformers.LlamaConfig(**spec, rope_parameters={"rope_type": "default", "rope_theta": theta})
    if family == "gemma3":
        theta, local = spec.pop("rope_theta"), spec.pop("rope_local_base_freq")
        rope = {"full_attention": {"rope_type": "default", "rope_theta": theta},
                "sliding_attention": {"rope_type": "default", "rope_theta": local}}
        return transformers.Gemma3TextConfig(**spec, rope_parameters=rope, layer_types=gemma3_layer_types(spec["num_hidden_layers"]))
    raise ValueError(f"unknown model family {family!r} (gpt2, llama, gemma3)")


def hf_model(spec: dict, seed: int):
    """A randomly initialised causal LM of `spec` (float32, eval mode, eager attention)."""
    if spec.get("family", "gpt2") == "gpt2":
        return hf_gpt2(spec, seed)
    import torch
    import transformers

    torch.manual_seed(seed)
    config = hf_config(spec)
    config._attn_implementation = "eager"
    cls = transformers.LlamaForCausalLM if spec["family"] == "llama" else transformers.Gemma3ForCausalLM
    return cls(config).eval()


def jax_model(hf_model):
    """The converted qlens-jax model of an in-memory transformers model."""
    import converters

    return converters.load_model(hf_model)


def token_sample(vocab: int, batch: int, seq: int, seed: int):
    """Random token ids `[batch, seq]` (seeded) and an all-valid mask."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, size=(batch, seq)).astype(np.int32), np.ones((batch, seq), bool)


WEIGHT_BLOCK_BYTES = 64 * 2**20  # host memory for one block of synthetic weight rows


def _synthetic_weights(d_model: int, n_features: int, layer: int, seed: int, build):
    """`(W_enc, W_dec)`: unit-norm decoder rows, encoder = standard normal / sqrt(d_model).

    Both are drawn from one seeded generator, decoder first, in row blocks of about
    `WEIGHT_BLOCK_BYTES`: a generator's stream does not depend on how the draws are split, so
    the numbers are those of one draw per matrix. `build(shape, blocks)` assembles a matrix
    from its blocks (in order), so no more than one block is ever held beside it.
    """
    import numpy as np

    rng = np.random.default_rng([seed, layer, n_features])

    def blocks(shape, finish):
        rows = max(1, WEIGHT_BLOCK_BYTES // (4 * shape[1]))
        for start in range(0, shape[0], rows):
            block = rng.standard_normal((min(rows, shape[0] - start), shape[1]), dtype=np.float32)
            finish(block)
            yield block

    def unit_rows(block):
        block /= np.linalg.norm(block, axis=1, keepdims=True)

    def scaled(block):
        block *= np.float32(1.0 / np.sqrt(d_model))

    W_dec = build((n_features, d_model), blocks((n_features, d_model), unit_rows))
    W_enc = build((d_model, n_features), blocks((d_model, n_features), scaled))
    return W_enc, W_dec


def _host_matrix(shape, blocks):
    """A float32 numpy matrix filled with `blocks` of rows, in order."""
    import numpy as np

    out, start = np.empty(shape, np.float32), 0
    for block in blocks:
        out[start : start + len(block)] = block
        start += len(block)
    return out


@functools.cache
def _row_writer():
    """`out[start : start + len(block)] = block` on the device, in place (`out` is donated)."""
    import jax

    write = lambda out, block, start: jax.lax.dynamic_update_slice_in_dim(out, block, start, axis=0)
    return jax.jit(write, donate_argnums=0)


def _device_matrix(shape, blocks):
    """A float32 JAX matrix filled with `blocks` of rows, in order, written in place.

    Converting a whole host matrix instead (`jnp.asarray`) holds it two to three times over
    (the host array, a staging copy, the device buffer) and does so asynchronously: the copy
    goes on after the call returns, so a memory reading taken "after the dictionary" missed
    it and the next phase's peak got it (the million benchmark's readout "grew" with n).
    Here each block is copied and waited for: the peak is the matrix plus one block, and the
    matrix is complete when this returns.
    """
    import jax.numpy as jnp

    out, start = jnp.zeros(shape, jnp.float32), 0
    for block in blocks:
        out = _row_writer()(out, block, start).block_until_ready()
        start += len(block)
    return out


def dictionary_arrays(d_model: int, n_features: int, layer: int, seed: int):
    """Synthetic SAE weights as numpy arrays `(W_enc, W_dec)` (see `_synthetic_weights`)."""
    return _synthetic_weights(d_model, n_features, layer, seed, _host_matrix)


def synthetic_dictionary(d_model: int, n_features: int, layer: int, seed: int, name: str | None = None):
    """A `qlens_jax.dictionaries.Dictionary` SAE on resid_post[layer] with the weights of
    `dictionary_arrays`, built on the device block by block (see `_device_matrix`): ready, and
    never held twice, when this returns."""
    import jax.numpy as jnp

    from qlens_jax.dictionaries import Dictionary

    W_enc, W_dec = _synthetic_weights(d_model, n_features, layer, seed, _device_matrix)
    return Dictionary(
        W_enc=W_enc,
        b_enc=jnp.zeros(n_features, jnp.float32),
        W_dec=W_dec,
        b_dec=jnp.zeros(d_model, jnp.float32),
        layer=layer,
        site_in="resid_post",
        site_out="resid_post",
        kind="sae",
        name=name or f"resid-post-{n_features // 1024}k",
        activation="relu",
    )


def feature_picks(n_features: int, count: int) -> list[int]:
    """`count` feature indices spread over the dictionary (deterministic)."""
    import numpy as np

    return sorted({int(i) for i in np.linspace(0, n_features - 1, count + 2)[1:-1].round()})


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


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


if __name__ == "__main__":
    print(json.dumps({"machine": machine_info(), "matmul": matmul_peak()}, indent=1))
    sys.exit(0)
