"""`qlens serve` on a synthetic million-feature run: latency under a bounded load, server
memory, and the reverse lookup warm (in the server) and cold (`qlens search`, a new process).

    nice python -m benchmarks.serve                  # 1,048,576 features, GPT-2-small shapes
    python -m benchmarks.serve --size tiny           # 16,384 features: a quick check

The run is written directly, no kernel run: a random GPT-2-small-shaped model (saved like a
Hugging Face checkpoint, with a word-level tokenizer of 50,257 tokens `t0 .. t50256`), a token
sample, random transport operators of the right shapes, `signatures.parquet` with random top-25 /
bottom-25 lists for `query_lens_value` and `query_lens_key` (one row group per 4,096 features,
as a run writes it) and one SAE on `resid_post[6]`, whose value and key rows are written
straight into the row cache that `qlens serve` memory-maps (so the one-time conversion of a
dictionary into that cache is not part of these numbers).

Measured, against 127.0.0.1 only:
1. cold `qlens search DIR --promotes TOKEN` (a new process: imports, model, operators, the lookup),
   twice: first with no final-norm statistics cached (so it includes their one-time computation,
   the transport of every feature), then again with them cached, as any later process finds them;
2. a server started with `qlens serve`, then one client alone for 10 s, then 8 concurrent clients for 30 s, each sending feature
   lookups (4 in 5) and token searches (1 in 5): p50 / p99 latency of each;
   (after the server has built its feature and token indexes, whose build time is reported);
3. reverse lookups in the warm server, one at a time: the first (loads the model, operators and
   cached statistics, compiles), then the next ones: p50 / p99;
4. the server's peak resident memory (VmHWM) over all of it.

Results: `benchmarks/results/serve-<size>-<device>.json`; the targets of issue 19 are printed
with whether each is met.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import builders, common, machine, sizes

SIZES = {
    "million": dict(hf=sizes.GPT2_SMALL, features=2**20, layer=6),
    "tiny": dict(hf=sizes.GPT2_SMALL, features=2**14, layer=6),
}
LENSES = ("query_lens_value", "query_lens_key")
K, SHARD = 25, 4096
TARGETS = {  # issue 19
    "feature_lookup_p99_ms": 50.0,
    "token_search_p99_ms": 500.0,
    "server_peak_rss_gib": 2.0,
    "reverse_lookup_warm_p50_s": 10.0,
}


# ---- the synthetic run ------------------------------------------------------------------------
def _tokenizer(vocab_size: int):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return tokenizer


def _write_rows(path: Path, n: int, d: int, seed: int, unit: bool) -> None:
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(seed)
    for start in range(0, n, 65536):
        block = rng.standard_normal((min(65536, n - start), d), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True) if unit else np.float32(np.sqrt(d))
        rows[start : start + len(block)] = block
    rows.flush()
    del rows


def _write_signatures(path: Path, n: int, vocab: np.ndarray, name: str, layer: int, seed: int) -> int:
    import pyarrow.parquet as pq

    from qlens_jax.io.parquet import SCHEMA, WRITE_OPTIONS, signature_rows
    from qlens_jax.lens.signatures import SignatureTable

    rng = np.random.default_rng(seed)
    rows = 0
    with pq.ParquetWriter(path, SCHEMA, **WRITE_OPTIONS) as writer:
        for lens in LENSES:
            for start in range(0, n, SHARD):
                ids = np.arange(start, min(n, start + SHARD))
                top = -np.sort(-rng.standard_normal((len(ids), K), dtype=np.float32), axis=1) + 3
                bottom = np.sort(rng.standard_normal((len(ids), K), dtype=np.float32), axis=1) - 3
                table = SignatureTable(
                    lens,
                    name,
                    layer,
                    ids,
                    rng.integers(0, len(vocab), (len(ids), K)),
                    top,
                    rng.integers(0, len(vocab), (len(ids), K)),
                    bottom,
                )
                strs = [f"Feature {name}/{layer}/{i}" for i in ids]
                writer.write_table(
                    signature_rows(table, keep=len(ids), dictionary_index=0, feature_strs=strs, vocab=vocab)
                )
                rows += len(ids)
    return rows


def build_run(workdir: Path, size: str, seed: int = 0) -> Path:
    """The synthetic run folder (and its row cache under `workdir/cache`), built once."""
    import jax.numpy as jnp

    import converters
    from qlens_jax.corpus import save_token_sample
    from qlens_jax.io.hashing import model_hash, text_hash
    from qlens_jax.job.inputs import vocab_strings
    from qlens_jax.lens import TransportOperators, save_operators
    from qlens_jax.lens.points import n_key_points, n_points
    from qlens_jax.serve.rows import rows_folder

    spec = SIZES[size]
    run_dir = workdir / f"run-{size}"
    if (run_dir / "run.json").is_file():
        return run_dir
    common.log(f"building the synthetic run in {run_dir}")
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = workdir / "model"
    if not (model_dir / "tokenizer.json").is_file():
        hf = builders.hf_gpt2(spec["hf"], seed)
        hf.save_pretrained(model_dir)
        _tokenizer(hf.config.vocab_size).save(str(model_dir / "tokenizer.json"))
    model = converters.load_model(model_dir)
    tokenizer = converters.load_tokenizer(model_dir)
    config = model.config
    d, n, layer = config.d_model, spec["features"], spec["layer"]
    name = f"resid-post-{n}"
    staging = workdir / f".building-{size}"
    staging.mkdir(parents=True, exist_ok=True)
    tokens, mask = builders.token_sample(config.vocab_size, 8, 256, seed)
    save_token_sample(staging / "sample.npy", tokens, mask)
    rng = np.random.default_rng(seed + 1)
    eye = np.eye(d, dtype=np.float32)
    value = np.stack(
        [eye + rng.standard_normal((d, d), dtype=np.float32) / np.sqrt(d) for _ in range(n_points(config.n_layers))]
    )
    key = np.stack(
        [eye + rng.standard_normal((d, d), dtype=np.float32) / np.sqrt(d) for _ in range(n_key_points(config.n_layers))]
    )
    save_operators(
        TransportOperators(jnp.asarray(value), jnp.asarray(key), None, None, int(mask.sum())), staging / "operators"
    )
    del value, key
    sha = hashlib.sha256(f"synthetic serve benchmark {size} {seed}".encode()).hexdigest()
    rows = rows_folder(sha)
    if not (rows / "meta.json").is_file():
        rows.mkdir(parents=True, exist_ok=True)
        common.log(f"writing {n:,} value and key rows to {rows}")
        _write_rows(rows / "value.npy", n, d, seed + 2, unit=True)
        _write_rows(rows / "key.npy", n, d, seed + 3, unit=False)
        (rows / "meta.json").write_text(
            json.dumps(
                {
                    "name": name,
                    "layer": layer,
                    "site_in": "resid_post",
                    "site_out": "resid_post",
                    "input_norm": "none",
                    "d_sae": n,
                    "sha256": sha,
                    "source": "synthetic",
                }
            )
        )
    common.log(f"writing signatures.parquet: {n:,} features x {len(LENSES)} lenses")
    vocab = vocab_strings(tokenizer, config.vocab_size)
    n_rows = _write_signatures(staging / "signatures.parquet", n, vocab, name, layer, seed + 4)
    manifest = {
        "command": ["benchmarks.serve", size],
        "status": "complete",
        "inputs": {
            "model": {
                "source": "synthetic gpt2-small",
                "path": str(model_dir),
                "sha256": model_hash(model),
                "config": {"vocab_size": config.vocab_size, "d_model": d, "n_layers": config.n_layers},
            },
            "tokenizer": {"source": str(model_dir), "sha256": text_hash(tokenizer.to_str())},
            "dictionaries": [
                {
                    "source": "synthetic",
                    "format": "synthetic",
                    "name": name,
                    "layer": layer,
                    "kind": "sae",
                    "site_in": "resid_post",
                    "site_out": "resid_post",
                    "d_sae": n,
                    "sha256": sha,
                    "features": n,
                }
            ],
            "sample": {"shape": list(tokens.shape), "valid_tokens": int(mask.sum())},
        },
        "options": {
            "lenses": list(LENSES),
            "k": K,
            "dtype": "float32",
            "tokenizer": None,
            "remove_final_norm_bias": False,
            "exact_norm_jacobian": False,
        },
        "outputs": {"signatures.parquet": {"rows": n_rows}},
    }
    (staging / "run.json").write_text(json.dumps(manifest, indent=1))
    staging.rename(run_dir)
    return run_dir


# ---- measuring --------------------------------------------------------------------------------
def _percentiles(values: list[float]) -> dict:
    a = np.asarray(values)
    return (
        {"count": len(a), "p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}
        if len(a)
        else {"count": 0}
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss_gib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _load(base: str, n_features: int, vocab: int, clients: int, seconds: float, seed: int) -> dict:
    """`clients` threads for `seconds`, each sending feature lookups (4 in 5) and token searches."""
    import httpx

    latencies: dict[str, list[float]] = {"feature": [], "search": []}
    errors: list[str] = []
    stop = time.perf_counter() + seconds

    def client(index: int):
        rng = random.Random(seed + index)
        with httpx.Client(base_url=base, timeout=60) as http:
            while time.perf_counter() < stop:
                kind = "search" if rng.random() < 0.2 else "feature"
                if kind == "feature":
                    url = f"/api/feature?dictionary=0&feature={rng.randrange(n_features)}"
                else:
                    url = f"/api/search?token=t{rng.randrange(vocab)}&limit=50"
                start = time.perf_counter()
                response = http.get(url)
                elapsed = time.perf_counter() - start
                if response.status_code != 200:
                    errors.append(f"{url}: {response.status_code} {response.text[:200]}")
                latencies[kind].append(elapsed * 1000)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "feature_lookup_ms": _percentiles(latencies["feature"]),
        "token_search_ms": _percentiles(latencies["search"]),
        "errors": errors[:10],
        "error_count": len(errors),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="million")
    parser.add_argument(
        "--workdir",
        default=str(Path(tempfile.gettempdir()) / "qlens-serve-bench"),
        help="where the synthetic run and row cache are kept",
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--reverse", type=int, default=4, help="reverse lookups per side after the first")
    args = parser.parse_args(argv)

    import httpx

    workdir = Path(args.workdir).absolute()
    os.environ["QLENS_CACHE_DIR"] = str(workdir / "cache")
    env = {**os.environ, "PYTHONPATH": str(common.REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t = time.perf_counter()
    run_dir = build_run(workdir, args.size)
    build_seconds = time.perf_counter() - t
    n, vocab = SIZES[args.size]["features"], 50257
    result = {
        "size": args.size,
        "features": n,
        "lenses": list(LENSES),
        "run_dir": common.portable_path(run_dir),
        "machine": machine.machine_info(),
        "build_seconds": round(build_seconds, 1),
        "parquet_bytes": (run_dir / "signatures.parquet").stat().st_size,
    }

    for rows in (workdir / "cache" / "rows").iterdir():
        shutil.rmtree(rows / "norm-stats", ignore_errors=True)
    for when in ("first", "cached"):
        common.log(f"cold `qlens search --promotes` in a new process ({when} final-norm statistics)")
        t = time.perf_counter()
        cold = subprocess.run(
            [
                sys.executable,
                "-m",
                "qlens_jax.cli",
                "search",
                str(run_dir),
                "--promotes",
                "t123",
                "--top",
                "50",
                "--json",
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        suffix = "_first_statistics" if when == "first" else ""
        result[f"cold_cli_reverse_lookup{suffix}_s"] = round(time.perf_counter() - t, 2)
        if cold.returncode != 0:
            raise SystemExit(f"qlens search failed: {cold.stderr[-2000:]}")
        result[f"cold_cli_lookup_only{suffix}_s"] = json.loads(cold.stdout)["seconds"]

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "qlens_jax.cli", "serve", str(run_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        result["server_banner"] = server.stdout.readline().strip().replace(str(run_dir), run_dir.name)
        t = time.perf_counter()
        with httpx.Client(
            base_url=base, timeout=600, headers={"X-Qlens-Request": "benchmark"}
        ) as http:  # the header of the costly routes
            for _ in range(600):
                try:
                    http.get("/api/run")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            result["server_start_s"] = round(time.perf_counter() - t, 2)
            result["rss_after_start_gib"] = round(_peak_rss_gib(server.pid), 3)
            common.log("waiting for the feature and token indexes (built in the background once per signatures file)")
            for kind in ("feature", "token"):  # built in this order
                while True:
                    index = http.get("/api/run").json()[f"{kind}_index"]
                    if index["error"] or index["indexed"] == index["files"]:
                        break
                    time.sleep(0.2)
                result[f"{kind}_index"] = index | {
                    "ready_after_s": round(time.perf_counter() - t - result["server_start_s"], 1)
                }
            for url in ("/api/feature?dictionary=0&feature=1", "/api/search?token=t1&limit=50"):  # warm-up
                http.get(url).raise_for_status()
            common.log("1 client for 10 s: the latency of a request alone")
            result["single_client"] = _load(base, n, vocab, 1, 10.0, seed=3)
            common.log(f"{args.clients} clients for {args.seconds:.0f} s: feature lookups and token searches")
            loadavg_before = machine.loadavg()
            result["load"] = _load(base, n, vocab, args.clients, args.seconds, seed=7)
            result["loadavg_load_phase"] = {"before": loadavg_before, "after": machine.loadavg()}
            result["rss_after_load_gib"] = round(_peak_rss_gib(server.pid), 3)
            common.log("reverse lookups in the warm server")
            reverse: dict[str, list[float]] = {"value": [], "key": []}
            first = {}
            rng = random.Random(11)
            for side in ("value", "key"):
                for i in range(args.reverse + 1):
                    t = time.perf_counter()
                    response = http.get(f"/api/reverse?token=t{rng.randrange(vocab)}&side={side}&top=50")
                    response.raise_for_status()
                    elapsed = time.perf_counter() - t
                    if i == 0:
                        first[side] = round(elapsed, 2)
                    else:
                        reverse[side].append(elapsed)
            result["reverse_first_s"] = first
            result["reverse_warm_s"] = {side: _percentiles(v) for side, v in reverse.items()}
        result["server_peak_rss_gib"] = round(_peak_rss_gib(server.pid), 3)
    finally:
        server.terminate()
        server.wait(timeout=60)

    load = result["load"]
    measured = {
        "feature_lookup_p99_ms": load["feature_lookup_ms"]["p99"],
        "token_search_p99_ms": load["token_search_ms"]["p99"],
        "server_peak_rss_gib": result["server_peak_rss_gib"],
        "reverse_lookup_warm_p50_s": max(result["reverse_warm_s"][s]["p50"] for s in ("value", "key")),
    }
    result["targets"] = {
        name: {"target": target, "measured": round(measured[name], 3), "met": measured[name] < target}
        for name, target in TARGETS.items()
    }
    result["loadavg_at_end"] = machine.loadavg()
    path = common.write_json(common.RESULTS / f"serve-{args.size}-{machine.device_slug()}.json", result)

    print(
        f"\nqlens serve on {n:,} features x {len(LENSES)} lenses ({result['parquet_bytes'] / 2**20:.0f} MiB of Parquet), "
        f"{args.clients} clients for {args.seconds:.0f} s against 127.0.0.1:"
    )
    for kind in ("feature_lookup_ms", "token_search_ms"):
        p, alone = load[kind], result["single_client"][kind]
        print(
            f"  {kind[:-3].replace('_', ' '):<15} {p['count']:>6} requests  p50 {p['p50']:8.1f} ms  p99 {p['p99']:8.1f} ms"
            f"   (one client alone: p50 {alone['p50']:.1f} ms, p99 {alone['p99']:.1f} ms)"
        )
    for side in ("value", "key"):
        p = result["reverse_warm_s"][side]
        print(
            f"  reverse lookup ({side}): first {first[side]:.1f} s (the first also loads what it needs), then p50 {p['p50']:.2f} s  "
            f"p99 {p['p99']:.2f} s over {p['count']}"
        )
    print(
        f"  cold `qlens search --promotes` (new process): {result['cold_cli_reverse_lookup_s']:.1f} s "
        f"(of which the lookup itself {result['cold_cli_lookup_only_s']:.1f} s); the first ever, computing the final-norm "
        f"statistics: {result['cold_cli_reverse_lookup_first_statistics_s']:.1f} s (lookup {result['cold_cli_lookup_only_first_statistics_s']:.1f} s)"
    )
    print(
        f"  server peak RSS {result['server_peak_rss_gib']:.2f} GiB; load errors: {load['error_count']}; "
        f"feature index ready {result['feature_index']['ready_after_s']:.0f} s and token index {result['token_index']['ready_after_s']:.0f} s after start"
    )
    print("targets (issue 19):")
    for name, t in result["targets"].items():
        print(f"  {name:<28} target < {t['target']:<6} measured {t['measured']:<10} {'met' if t['met'] else 'NOT MET'}")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
