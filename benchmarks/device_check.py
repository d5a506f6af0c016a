"""One short run that says what qlens-jax does on a device: versions, matmul peaks, parity, speed.

    PYTHONPATH=. python -m benchmarks.device_check                   # the real sizes (a GPU: < 8 min)
    PYTHONPATH=. python -m benchmarks.device_check --size tiny       # toy sizes, seconds on a CPU
    PYTHONPATH=. python -m benchmarks.device_check --table benchmarks/results/device-*.json

Runs from the source tree without an install, on the pinned JAX and on newer ones (JAX 0.11
with CUDA): it needs jax, equinox, numpy, safetensors and transformers (configs only; no torch).
Parts, most important first (`PARTS`):

1. `versions`: device, driver and package versions;
2. `matmul_peak`: the measured FLOP/s of an `n x n` float32 matmul under each precision mode
   (`qlens_jax.numerics`); a mode the backend cannot honour is recorded "unavailable on <backend>";
3. `parity`: `query_lens` on the committed fixture (tests/fixtures/device_check, written by
   `benchmarks.make_device_fixture`: a tiny GPT-2, an SAE, a token sample and the CPU's float32
   top-25 of all six lenses): float32 mode must give the same top-25 ids (ties aside: ids may
   swap where the CPU's scores differ by less than `TIE_RTOL` of the scale) and scores within
   `SCORE_RTOL` of the scale; tf32 and bfloat16 report their top-25 overlap with the CPU's;
4. `gpt2_small_{2048,32768}_float32`, `gpt2_small_32768_{tf32,bfloat16}`: GPT-2-small dimensions
   (random weights), a 32,768-feature SAE on every layer's resid_post, both Query Lens sides, the
   whole-dictionary job: sweep and readout seconds and FLOP/s against the measured peak of the
   mode (FLOPs counted by `job_flops`, an estimate of the useful arithmetic). Times include
   compilation, except the 2,048-token sweep, run twice (`compile_s` is the difference);
5. `gemma3_1b_single_layer`: a Gemma-3-1B-shaped model (random weights, 26 layers, d_model 1152,
   vocabulary 262,144, 5 local : 1 global attention) with a 16,384-feature SAE at layer 13, the
   single-layer job (the sweeps restricted to the blocks that layer needs), both sides.
6. `paper_<setting>_{float32,bfloat16}`: the paper's four settings (`benchmarks.sizes.THROUGHPUT`:
   GPT-2 small, Gemma-3-270M, Gemma-3-1B, Qwen3-1.7B-Base; random weights, a synthetic SAE of the
   setting's width at each of its layers) at the paper's sample (1024 x 32 tokens), the
   whole-dictionary job at those layers, both sides, the model stored in float32 and in bfloat16;
   the bfloat16 part reports the top-25 overlap with the float32 part's lists;
7. `million_gemma2_2b`: a Gemma-2-2B-shaped model (random weights, vocabulary 256,000) with
   1,048,576 features at layer 12, the whole job (`benchmarks.million.gemma2_layer_job`: both
   sweeps for that layer, then both readouts slice by slice).

`--parts NAME ...` runs only those parts (with the versions and the matmul peak).

`--budget-s` (default 420) bounds the whole run: before each part the time it would take is
estimated from the parts before it, and a part that would not fit is skipped with the reason; a
part still running when the budget ends is recorded as stopped and the run ends. The results file
(`benchmarks/results/device-<card>.json`, `-tiny` appended for `--size tiny`) is rewritten after
every part, so whatever was measured is kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import builders, machine, sizes
from benchmarks.roofline import job_flops

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "device_check"
RESULTS = REPO / "benchmarks" / "results"
SAE_DIR = "sae-resid-post-1"
K = 25
TIE_RTOL = 1e-4
SCORE_RTOL = 1e-4
MODES = ("float32", "tf32", "bfloat16")
# The paper's four settings (`benchmarks.sizes.THROUGHPUT`), each in both stored dtypes.
PAPER_SETTINGS = ("gpt2-small", "gemma3-270m", "gemma3-1b", "qwen3-1.7b")
PAPER_PARTS = tuple(
    f"paper_{setting.replace('-', '_').replace('.', '_')}_{dtype}"
    for setting in PAPER_SETTINGS
    for dtype in ("float32", "bfloat16")
)
PARTS = (
    "versions",
    "matmul_peak",
    "parity",
    "gpt2_small_2048_float32",
    "gpt2_small_32768_float32",
    "gpt2_small_32768_tf32",
    "gpt2_small_32768_bfloat16",
    "gemma3_1b_single_layer",
    *PAPER_PARTS,
    "million_gemma2_2b",
)
GEMMA3_1B = dict(
    vocab_size=262144,
    hidden_size=1152,
    intermediate_size=6912,
    num_hidden_layers=26,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=256,
    sliding_window=512,
)
SIZES = {
    "full": dict(
        gpt2={},
        features=32768,
        tokens={"2048": 2048, "32768": 32768},
        seq=256,
        matmul_n=8192,
        gemma=GEMMA3_1B,
        gemma_layer=13,
        gemma_features=16384,
        gemma_tokens=2048,
        paper={name: sizes.THROUGHPUT[name] for name in PAPER_SETTINGS},
        paper_sample=sizes.PAPER_SAMPLE,
        million=dict(sizes.MILLION["gemma2-2b"], budget=16.0),
        million_slice=131072,
    ),
    "tiny": dict(
        gpt2=dict(n_embd=64, n_layer=2, n_head=4, vocab_size=512, n_positions=64, bos_token_id=0, eos_token_id=0),
        features=256,
        tokens={"2048": 32, "32768": 64},
        seq=16,
        matmul_n=256,
        gemma=dict(
            vocab_size=512,
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            sliding_window=4,
            layer_types=["sliding_attention"] * 3 + ["full_attention"],
        ),
        gemma_layer=2,
        gemma_features=128,
        gemma_tokens=32,
        # the same families at test size, each with job layers of its own
        paper={
            "gpt2-small": dict(hf=sizes.GPT2_TINY, features=128, job_layers=None),
            "gemma3-270m": dict(hf=sizes.GEMMA3_TINY, features=128, job_layers=(2, 4, 5)),
            "gemma3-1b": dict(hf=sizes.GEMMA3_TINY, features=128, job_layers=(1, 3)),
            "qwen3-1.7b": dict(hf=sizes.QWEN3_TINY, features=128, job_layers=(1, 2)),
        },
        paper_sample=(4, 8),
        million=sizes.MILLION["gemma2-tiny"],
        million_slice=1024,
    ),
}
# Features of each paper part whose float32 top-25 the bfloat16 part is compared with.
OVERLAP_FEATURES = 64
# The precision mode of the parts that run in one (checked first: costs nothing, needs no budget).
PART_MODES = {
    "gpt2_small_2048_float32": "float32",
    "gpt2_small_32768_float32": "float32",
    "gpt2_small_32768_tf32": "tf32",
    "gpt2_small_32768_bfloat16": "bfloat16",
}
# Seconds a part needs at least (loading, one compilation) before its estimate is worth anything.
MIN_PART_S = 5.0


def _block(x):
    import jax

    return jax.block_until_ready(x)


def timed(fn, *args, **kwargs):
    """(result, seconds), waiting for the device."""
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    with contextlib.suppress(Exception):
        _block(result)
    return result, time.perf_counter() - start


def available(mode: str) -> str | None:
    """None if the default backend honours precision `mode`, else why not ("unavailable on cpu")."""
    import jax

    from qlens_jax import numerics

    try:
        numerics.check_precision(mode)
    except numerics.PrecisionError:
        return f"unavailable on {jax.default_backend()}"
    return None


# ---------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------


def _run(*command: str) -> str | None:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def card_name() -> str:
    """The device's kind as a file-name slug ("cpu", "nvidia-h100-80gb-hbm3", ...)."""
    import jax

    device = jax.devices()[0]
    if device.platform == "cpu":
        return "cpu"
    return "".join(c if c.isalnum() else "-" for c in device.device_kind.lower()).strip("-")


def part_versions(cfg: dict, parts: dict) -> dict:
    import jax

    device = jax.devices()[0]
    stats = {}
    with contextlib.suppress(Exception):
        stats = {k: v for k, v in (device.memory_stats() or {}).items() if k in ("bytes_limit", "bytes_in_use")}
    packages = (
        "jax",
        "jaxlib",
        "jax-cuda13-plugin",
        "jax-cuda13-pjrt",
        "jax-cuda12-plugin",
        "jax-cuda12-pjrt",
        "libtpu",
        "equinox",
        "numpy",
        "safetensors",
        "transformers",
        "optax",
        "orbax-checkpoint",
    )
    return {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "memory_stats": stats,
        "driver": _run("nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"),
        "python": platform.python_version(),
        "packages": {name: machine.package_version(name) for name in packages},
        "jax_version": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "git_commit": _run("git", "rev-parse", "HEAD"),
        "host": platform.node(),
    }


def part_matmul_peak(cfg: dict, parts: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from qlens_jax.numerics import matmul_precision

    n = cfg["matmul_n"]
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    out = {"n": n}
    for mode in MODES:
        if (why := available(mode)) is not None:
            out[mode] = why
            continue
        with matmul_precision(mode):
            f = jax.jit(jnp.matmul)
            _block(f(a, b))
            times = [timed(f, a, b)[1] for _ in range(5)]
        out[mode] = {"flops_per_s": 2 * n**3 / min(times), "times_s": [round(t, 5) for t in times]}
    return out


def load_fixture(directory: Path):
    """The fixture's model, dictionary and token sample, read with the converters."""
    import converters
    from converters import load_dictionary

    model = converters.load_model(directory / "model")
    dictionary = load_dictionary(directory / SAE_DIR, model)
    return model, dictionary, np.load(directory / "tokens.npy"), np.load(directory / "mask.npy")


def fixture_signatures(directory: Path, mode: str) -> dict[str, dict[str, np.ndarray]]:
    """`{lens: {"top_ids", "top_scores"}}` of every fixture feature under all six lenses at `mode`."""
    import qlens_jax

    model, dictionary, tokens, mask = load_fixture(directory)
    signatures = qlens_jax.query_lens(
        model, dictionary, tokens, mask, lenses=qlens_jax.LENSES, k=K, precision=mode, self_check=False
    )
    return {
        table.lens: {"top_ids": np.asarray(table.top_ids), "top_scores": np.asarray(table.top_scores, np.float32)}
        for table in signatures
    }


def same_up_to_ties(ids: np.ndarray, reference_ids: np.ndarray, reference_scores: np.ndarray, tolerance: float) -> bool:
    """Whether each row of `ids` equals the reference's, except for swaps among entries whose
    reference scores lie within `tolerance` of each other (order among ties is arbitrary; an id
    from outside the reference list must tie with its last entry)."""
    for row, reference, scores in zip(ids, reference_ids, reference_scores):
        for i in np.flatnonzero(row != reference):
            where = np.flatnonzero(reference == row[i])
            other = scores[where[0]] if where.size else scores[-1]
            if abs(other - scores[i]) > tolerance:
                return False
    return True


def compare(got: dict, expected: dict) -> dict:
    """Per lens: strict id equality, equality up to ties, worst score difference (relative to
    the lens's score scale) and the mean top-k overlap."""
    out = {}
    for lens, table in expected.items():
        ids, scores = got[lens]["top_ids"], got[lens]["top_scores"]
        scale = float(np.abs(table["top_scores"]).max()) or 1.0
        overlap = np.mean([len(np.intersect1d(a, b)) / a.size for a, b in zip(ids, table["top_ids"])])
        out[lens] = {
            "ids_identical": bool((ids == table["top_ids"]).all()),
            "ids_identical_up_to_ties": same_up_to_ties(ids, table["top_ids"], table["top_scores"], TIE_RTOL * scale),
            "max_score_error": float(np.abs(scores - table["top_scores"]).max() / scale),
            "overlap": float(overlap),
        }
    return out


def part_parity(cfg: dict, parts: dict) -> dict:
    reference = np.load(FIXTURE / "expected.npz")
    expected: dict[str, dict] = {}
    for key in reference.files:
        lens, field = key.split("/")
        expected.setdefault(lens, {})[field] = reference[key]
    out = {"fixture": str(FIXTURE.relative_to(REPO)), "tie_rtol": TIE_RTOL, "score_rtol": SCORE_RTOL}
    for mode in MODES:
        if (why := available(mode)) is not None:
            out[mode] = why
            continue
        lenses = compare(fixture_signatures(FIXTURE, mode), expected)
        result = {"lenses": lenses, "mean_overlap": float(np.mean([v["overlap"] for v in lenses.values()]))}
        if mode == "float32":
            result["passed"] = all(
                v["ids_identical_up_to_ties"] and v["max_score_error"] <= SCORE_RTOL for v in lenses.values()
            )
        out[mode] = result
    return out


_CACHE: dict = {}


def random_model(family: str, overrides: dict, seed: int = 0):
    """A randomly initialised model of `family` ("gpt2" or "gemma3") with the Hugging Face config
    `overrides` (weights drawn on the device; transformers is used for its config only)."""
    key = (family, json.dumps(overrides, sort_keys=True))
    if key not in _CACHE:
        import jax
        import transformers

        from converters import model_config_from_hf
        from qlens_jax.models import init_transformer

        cls = transformers.GPT2Config if family == "gpt2" else transformers.Gemma3TextConfig
        config = model_config_from_hf(cls(**overrides).to_dict())
        _CACHE[key] = init_transformer(config, jax.random.key(seed))
    return _CACHE[key]


def random_sae(d_model: int, n_features: int, layer: int, seed: int = 0):
    """A standard SAE on `resid_post[layer]`: unit-norm decoder rows, encoder normal / sqrt(d)."""
    key = ("sae", d_model, n_features, layer, seed)
    if key not in _CACHE:
        import jax
        import jax.numpy as jnp

        from qlens_jax.dictionaries import Dictionary

        k_dec, k_enc = jax.random.split(jax.random.key(seed + 1000 * layer))
        W_dec = jax.random.normal(k_dec, (n_features, d_model), jnp.float32)
        W_dec = W_dec / jnp.linalg.norm(W_dec, axis=1, keepdims=True)
        W_enc = jax.random.normal(k_enc, (d_model, n_features), jnp.float32) / np.sqrt(d_model)
        _CACHE[key] = Dictionary(
            W_enc=W_enc,
            b_enc=jnp.zeros(n_features),
            W_dec=W_dec,
            b_dec=jnp.zeros(d_model),
            layer=layer,
            site_in="resid_post",
            site_out="resid_post",
            kind="sae",
            name=f"sae-{layer}",
            activation="relu",
        )
    return _CACHE[key]


def _rate(flops: float, seconds: float, peak) -> dict:
    rate = flops / seconds if seconds > 0 else float("nan")
    fraction = rate / peak["flops_per_s"] if isinstance(peak, dict) else None
    return {"flops": flops, "flops_per_s": rate, "fraction_of_peak": fraction}


def _tokens(vocab: int, n_tokens: int, seq: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(max(1, n_tokens // seq), seq)).astype(np.int32)
    return tokens, np.ones(tokens.shape, bool)


def whole_dictionary_job(cfg: dict, parts: dict, tokens_key: str, mode: str, repeat_sweep: bool = False) -> dict:
    """The GPT-2-small whole-dictionary job (both Query Lens sides, a dictionary per layer).
    `repeat_sweep`: run the sweeps twice and report the second (the first compiles; their
    difference is `compile_s`), so that later parts can be estimated without compilation."""
    if (why := available(mode)) is not None:
        return {"status": why}
    import qlens_jax
    from qlens_jax.lens.points import residual_point

    model = random_model("gpt2", cfg["gpt2"])
    c = model.config
    tokens, mask = _tokens(c.vocab_size, cfg["tokens"][tokens_key], cfg["seq"])
    bounds = dict(
        value_from_point=residual_point("resid_post", 0, c.n_layers),
        key_to_point=residual_point("resid_post", c.n_layers - 1, c.n_layers),
    )
    sweep = lambda: qlens_jax.transport_operators(
        model, tokens, mask, sweeps=("value", "key"), precision=mode, **bounds
    )
    operators, sweep_s = timed(sweep)
    extra = {}
    if repeat_sweep:
        del operators
        operators, second = timed(sweep)
        extra = {"first_sweep_s": sweep_s, "compile_s": max(sweep_s - second, 0.0)}
        sweep_s = second
    readout_s = 0.0
    for layer in range(c.n_layers):
        dictionary = random_sae(c.d_model, cfg["features"], layer)
        _, seconds = timed(
            qlens_jax.query_lens,
            model,
            dictionary,
            tokens,
            mask,
            lenses=("query_lens_value", "query_lens_key"),
            operators=operators,
            path="dense",
            self_check=False,
            k=K,
            precision=mode,
        )
        readout_s += seconds
    flops = job_flops(c, tokens.size, cfg["seq"], c.n_layers, c.n_layers, 2 * c.n_layers, cfg["features"])
    peak = parts.get("matmul_peak", {}).get(mode)
    return {
        "tokens": int(tokens.size),
        "features_per_layer": cfg["features"],
        "layers": c.n_layers,
        "precision": mode,
        **extra,
        "sweep_s": sweep_s,
        "readout_s": readout_s,
        "total_s": sweep_s + readout_s,
        "sweep": _rate(flops["sweep"], sweep_s, peak),
        "readout": _rate(flops["readout"], readout_s, peak),
    }


def part_gemma(cfg: dict, parts: dict) -> dict:
    import qlens_jax
    from qlens_jax.lens.points import residual_point

    model = random_model("gemma3", cfg["gemma"])
    c = model.config
    layer = cfg["gemma_layer"]
    tokens, mask = _tokens(c.vocab_size, cfg["gemma_tokens"], cfg["seq"])
    point = residual_point("resid_post", layer, c.n_layers)
    operators, sweep_s = timed(
        qlens_jax.transport_operators,
        model,
        tokens,
        mask,
        sweeps=("value", "key"),
        value_from_point=point,
        key_to_point=point,
    )
    dictionary = random_sae(c.d_model, cfg["gemma_features"], layer)
    _, readout_s = timed(
        qlens_jax.query_lens,
        model,
        dictionary,
        tokens,
        mask,
        lenses=("query_lens_value", "query_lens_key"),
        operators=operators,
        path="dense",
        self_check=False,
        k=K,
    )
    flops = job_flops(c, tokens.size, cfg["seq"], c.n_layers - layer - 1, layer + 1, 2, cfg["gemma_features"])
    peak = parts.get("matmul_peak", {}).get("float32")
    return {
        "tokens": int(tokens.size),
        "layer": layer,
        "features": cfg["gemma_features"],
        "n_layers": c.n_layers,
        "d_model": c.d_model,
        "vocab": c.vocab_size,
        "precision": "float32",
        "sweep_s": sweep_s,
        "readout_s": readout_s,
        "total_s": sweep_s + readout_s,
        "sweep": _rate(flops["sweep"], sweep_s, peak),
        "readout": _rate(flops["readout"], readout_s, peak),
    }


def random_model_of(spec: dict, seed: int = 0):
    """A randomly initialised model of a `benchmarks.sizes` shape (weights drawn on the device)."""
    key = ("spec", json.dumps(spec, sort_keys=True))
    if key not in _CACHE:
        import jax

        from converters import model_config_from_hf
        from qlens_jax.models import init_transformer

        _CACHE[key] = init_transformer(model_config_from_hf(builders.hf_config(spec).to_dict()), jax.random.key(seed))
    return _CACHE[key]


def _paper_setting(cfg: dict, setting: str):
    """(setting spec, its model config, its job layers, (batch, seq))."""
    from converters import model_config_from_hf

    spec = cfg["paper"][setting]
    config = model_config_from_hf(builders.hf_config(spec["hf"]).to_dict())
    return spec, config, tuple(spec["job_layers"] or range(config.n_layers)), cfg["paper_sample"]


def _paper_flops(config, job_layers, batch: int, seq: int, n_features: int) -> dict:
    """`job_flops` of a paper setting's whole-dictionary job at its layers."""
    value_blocks, key_blocks = config.n_layers - min(job_layers) - 1, max(job_layers) + 1
    return job_flops(config, batch * seq, seq, value_blocks, key_blocks, 2 * len(job_layers), n_features)


def paper_job(cfg: dict, parts: dict, setting: str, dtype: str) -> dict:
    """One of the paper's settings (random weights of its shape, a synthetic dictionary of its
    width at each of its layers), the whole-dictionary job at the paper's sample, both Query
    Lens sides, the model stored in `dtype` (products in float32 precision). The bfloat16 part
    reports the top-25 overlap of `OVERLAP_FEATURES` features per layer and side with the
    float32 part's lists (kept in memory when that part ran first)."""
    import qlens_jax
    from qlens_jax.numerics import cast_model

    spec, config, job_layers, (batch, seq) = _paper_setting(cfg, setting)
    model = random_model_of(spec["hf"])
    model = cast_model(model, dtype) if dtype != "float32" else model
    tokens, mask = _tokens(config.vocab_size, batch * seq, seq)
    operators, sweep_s = timed(
        qlens_jax.transport_operators,
        model,
        tokens,
        mask,
        sweeps=("value", "key"),
        **builders.job_bounds(job_layers, config.n_layers),
    )
    picks = np.linspace(0, spec["features"] - 1, min(OVERLAP_FEATURES, spec["features"])).astype(int)
    readout_s, lists = 0.0, {}
    for layer in job_layers:
        dictionary = random_sae(config.d_model, spec["features"], layer)
        tables, seconds = timed(
            qlens_jax.query_lens,
            model,
            dictionary,
            tokens,
            mask,
            lenses=("query_lens_value", "query_lens_key"),
            operators=operators,
            path="dense",
            self_check=False,
            k=K,
            dtype=dtype,
        )
        readout_s += seconds
        lists.update({(t.lens, layer): np.asarray(t.top_ids)[picks] for t in tables})
    _CACHE[("paper-lists", setting, dtype)] = lists
    result = {
        "setting": setting,
        "tokens": int(tokens.size),
        "sample": [batch, seq],
        "features_per_layer": spec["features"],
        "layers": list(job_layers),
        "dtype": dtype,
        "sweep_s": sweep_s,
        "readout_s": readout_s,
        "total_s": sweep_s + readout_s,
    }
    reference = _CACHE.get(("paper-lists", setting, "float32"))
    if dtype != "float32" and reference is not None:
        shares = [len(set(a) & set(b)) / K for key in lists for a, b in zip(lists[key], reference[key])]
        result["top25_overlap_with_float32"] = {
            "mean": float(np.mean(shares)),
            "min": float(np.min(shares)),
            "lists": len(shares),
        }
    flops = _paper_flops(config, job_layers, batch, seq, spec["features"])
    peak = parts.get("matmul_peak", {}).get("float32")
    return result | {"sweep": _rate(flops["sweep"], sweep_s, peak), "readout": _rate(flops["readout"], readout_s, peak)}


def _million_flops(cfg: dict) -> float:
    """The million part's FLOPs from its shape alone (sweeps for its layer, both readouts)."""
    spec = cfg["million"]
    config = builders.gemma2_model_config(spec["shape"])
    tokens, layer = spec["batch"] * spec["seq"], spec["layer"]
    flops = job_flops(config, tokens, spec["seq"], config.n_layers - layer - 1, layer + 1, 2, spec["features"])
    return flops["sweep"] + flops["readout"]


def part_million(cfg: dict, parts: dict) -> dict:
    """A million-feature Gemma-2-2B layer (random weights, vocabulary 256,000), the whole job
    (`benchmarks.million.gemma2_layer_job`), with its FLOP rate."""
    from benchmarks import million

    result = million.gemma2_layer_job(cfg["million"], 0, cfg["million_slice"])
    peak = parts.get("matmul_peak", {}).get("float32")
    return result | {"rate": _rate(_million_flops(cfg), result["total_s"], peak), "peak_memory": machine.peak_memory()}


def _measured(parts: dict, name: str) -> dict | None:
    part = parts.get(name, {})
    return part if part.get("status") == "ok" and "total_s" in part else None


def estimate_s(name: str, cfg: dict, parts: dict) -> float | None:
    """Seconds part `name` should take, from the parts measured before it (None: no basis)."""
    small = _measured(parts, "gpt2_small_2048_float32")
    large = _measured(parts, "gpt2_small_32768_float32")
    if name == "gpt2_small_32768_float32" and small:
        ratio = cfg["tokens"]["32768"] / cfg["tokens"]["2048"]
        return small.get("compile_s", 0.0) + small["sweep_s"] * ratio + small["readout_s"]
    if name in ("gpt2_small_32768_tf32", "gpt2_small_32768_bfloat16"):
        if large:
            return large["total_s"]
        if small:
            return estimate_s("gpt2_small_32768_float32", cfg, parts)
    basis = next((part for part in (large, small) if part and part["total_s"] > 0), None)
    if name == "gemma3_1b_single_layer" and basis:
        rate = (basis["sweep"]["flops"] + basis["readout"]["flops"]) / basis["total_s"]
        return _gemma_flops(cfg) / rate
    if name == "million_gemma2_2b" and basis:
        rate = (basis["sweep"]["flops"] + basis["readout"]["flops"]) / basis["total_s"]
        return _million_flops(cfg) / rate
    if name in PAPER_PARTS:
        setting = PAPER_SETTINGS[PAPER_PARTS.index(name) // 2]
        float32_part = _measured(parts, PAPER_PARTS[2 * PAPER_SETTINGS.index(setting)])
        if name.endswith("_bfloat16") and float32_part:
            return float32_part["total_s"]
        basis = next(
            (
                part
                for part in (large, small, *map(lambda n: _measured(parts, n), PAPER_PARTS))
                if part and part["total_s"] > 0
            ),
            None,
        )
        if basis:
            rate = (basis["sweep"]["flops"] + basis["readout"]["flops"]) / basis["total_s"]
            spec, config, job_layers, (batch, seq) = _paper_setting(cfg, setting)
            flops = _paper_flops(config, job_layers, batch, seq, spec["features"])
            return (flops["sweep"] + flops["readout"]) / rate
    return None


def _gemma_flops(cfg: dict) -> float:
    """The Gemma part's FLOPs from its config alone (no weights built)."""
    import transformers

    from converters import model_config_from_hf

    c = model_config_from_hf(transformers.Gemma3TextConfig(**cfg["gemma"]).to_dict())
    layer = cfg["gemma_layer"]
    n_tokens = (cfg["gemma_tokens"] // cfg["seq"]) * cfg["seq"]
    flops = job_flops(c, n_tokens, cfg["seq"], c.n_layers - layer - 1, layer + 1, 2, cfg["gemma_features"])
    return flops["sweep"] + flops["readout"]


PART_FUNCTIONS = {
    "versions": part_versions,
    "matmul_peak": part_matmul_peak,
    "parity": part_parity,
    "gpt2_small_2048_float32": lambda cfg, parts: whole_dictionary_job(
        cfg, parts, "2048", "float32", repeat_sweep=True
    ),
    "gpt2_small_32768_float32": lambda cfg, parts: whole_dictionary_job(cfg, parts, "32768", "float32"),
    "gpt2_small_32768_tf32": lambda cfg, parts: whole_dictionary_job(cfg, parts, "32768", "tf32"),
    "gpt2_small_32768_bfloat16": lambda cfg, parts: whole_dictionary_job(cfg, parts, "32768", "bfloat16"),
    "gemma3_1b_single_layer": part_gemma,
    "million_gemma2_2b": part_million,
    **{
        name: (lambda cfg, parts, setting=setting, dtype=dtype: paper_job(cfg, parts, setting, dtype))
        for name, (setting, dtype) in zip(
            PAPER_PARTS, ((s, d) for s in PAPER_SETTINGS for d in ("float32", "bfloat16"))
        )
    },
}


# ---------------------------------------------------------------------------------------------
# Running, writing, tables
# ---------------------------------------------------------------------------------------------


def write_json(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(results, indent=1, default=float) + "\n")
    partial.replace(path)


def _unavailable_or(name: str, status: dict) -> dict:
    """`status`, unless part `name` runs in a precision mode the backend lacks."""
    why = available(PART_MODES[name]) if name in PART_MODES else None
    return {"status": why} if why is not None else status


def run(
    size: str, budget_s: float, out: Path | None, log=print, exit=os._exit, selected: tuple[str, ...] | None = None
) -> Path:
    """Every part in order within `budget_s` seconds; the results file after each (its path).

    A part still running when the budget ends is not interrupted (an exception thrown into a
    running JAX computation can abort the process): a watchdog thread records it as stopped and
    the rest as skipped, writes the results and ends the process with `exit(0)`."""
    import qlens_jax  # noqa: F401  (its XLA flags before JAX starts)

    start = time.monotonic()
    cfg = SIZES[size]
    out = out or RESULTS / f"device-{card_name()}{'-tiny' if size == 'tiny' else ''}.json"
    results = {
        "size": size,
        "budget_s": budget_s,
        "card": card_name(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parts": {},
    }
    parts = results["parts"]
    lock, overran = threading.Lock(), threading.Event()

    def finish(status: dict) -> None:
        parts.update({name: _unavailable_or(name, status) for name in PARTS if name not in parts})
        results["elapsed_s"] = time.monotonic() - start
        write_json(out, results)

    def overrun(name: str) -> None:
        with lock:
            if name in parts:
                return
            overran.set()
            parts[name] = {
                "status": "stopped",
                "reason": f"the {budget_s:.0f} s budget ran out",
                "wall_s": time.monotonic() - begun,
            }
            finish({"status": "skipped", "reason": "the budget ran out"})
        log(f"[{results['elapsed_s']:6.1f} s] {name}: stopped; results in {out}")
        exit(0)

    for name in PARTS:
        left = budget_s - (time.monotonic() - start)
        status = _unavailable_or(name, {})
        if selected is not None and name not in selected and not status:
            status = {"status": "skipped", "reason": "not selected (--parts)"}
        guess = estimate_s(name, cfg, parts) if left > MIN_PART_S and not status else None
        if not status and (left <= MIN_PART_S or (guess is not None and guess > left)):
            reason = f"needs about {guess:.0f} s, {left:.0f} s left" if guess is not None else f"{left:.0f} s left"
            status = {"status": "skipped", "reason": reason}
        if not status:
            begun = time.monotonic()
            watchdog = threading.Timer(left, overrun, args=(name,))
            watchdog.daemon = True
            watchdog.start()
            try:
                result = PART_FUNCTIONS[name](cfg, parts)
                status = {"status": result.pop("status", "ok"), **result}
            except Exception as err:  # record and go on: later parts may still work
                status = {"status": "error", "error": f"{type(err).__name__}: {err}"[:2000]}
            watchdog.cancel()
            status["wall_s"] = time.monotonic() - begun
            if guess is not None:
                status["estimated_s"] = guess
        with lock:
            if overran.is_set():
                break
            parts[name] = status
            results["elapsed_s"] = time.monotonic() - start
            write_json(out, results)
        log(f"[{results['elapsed_s']:6.1f} s] {name}: {status['status']}")
    return out


def _fmt_peak(part, mode: str) -> str:
    value = (part or {}).get(mode)
    return f"{value['flops_per_s'] / 1e12:.1f}" if isinstance(value, dict) else "n/a"


def _fmt_job(part) -> str:
    if not part or part.get("status") != "ok":
        return (part or {}).get("status", "missing")
    fractions = [part.get(k, {}).get("fraction_of_peak") for k in ("sweep", "readout")]
    share = "" if None in fractions else f" ({100 * fractions[0]:.0f} % / {100 * fractions[1]:.0f} %)"
    return f"{part['sweep_s']:.1f} + {part['readout_s']:.1f} s{share}"


def table(paths: list[Path]) -> str:
    """Markdown rows, one per results file: peaks (TFLOP/s), parity, job times as
    `sweep + readout s (% of the mode's peak: sweep / readout)`."""
    columns = [
        "card",
        "size",
        "jax",
        "peak f32 / tf32 / bf16 TFLOP/s",
        "parity f32",
        "overlap tf32 / bf16",
        "GPT-2 2,048 f32",
        "32,768 f32",
        "32,768 tf32",
        "32,768 bf16",
        "Gemma-3-1B layer",
        *(f"paper {s} {d}" for s in PAPER_SETTINGS for d in ("f32", "bf16")),
        "Gemma-2-2B 2^20 features",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for path in paths:
        r = json.loads(Path(path).read_text())
        p = r["parts"]
        versions, peak, parity = p.get("versions", {}), p.get("matmul_peak"), p.get("parity", {})
        f32 = parity.get("float32")
        passed = ("passed" if f32["passed"] else "FAILED") if isinstance(f32, dict) else parity.get("status", "missing")
        overlaps = " / ".join(
            f"{parity[m]['mean_overlap']:.3f}" if isinstance(parity.get(m), dict) else "n/a"
            for m in ("tf32", "bfloat16")
        )
        lines.append(
            f"| {r['card']} | {r['size']} | {versions.get('jax_version', '?')} | "
            f"{' / '.join(_fmt_peak(peak, m) for m in MODES)} | {passed} | {overlaps} | "
            + " | ".join(_fmt_job(p.get(name)) for name in PARTS[3:])
            + " |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--budget-s", type=float, default=420.0, help="seconds for the whole run (default 420)")
    parser.add_argument("--out", type=Path, help="results file (default benchmarks/results/device-<card>.json)")
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        metavar="PART",
        help="run only these parts (versions and matmul_peak always run: the rates need the peak); "
        "e.g. the paper's settings: " + " ".join(PAPER_PARTS[:2]) + " ...",
    )
    parser.add_argument(
        "--table", nargs="+", type=Path, metavar="JSON", help="print markdown rows of these results files and exit"
    )
    args = parser.parse_args(argv)
    if args.table:
        print(table(args.table))
        return 0
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    selected = None if not args.parts else ("versions", "matmul_peak", *args.parts)
    path = run(
        args.size, args.budget_s, args.out, log=lambda line: print(line, file=sys.stderr, flush=True), selected=selected
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
