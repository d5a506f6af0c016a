"""A million features at one layer: every feature of a 1,048,576-feature synthetic SAE on
`resid_post[layer]` of a GPT-2-small-sized model, both Query Lens sides, end to end on one
device (sweeps, readouts, self-check), within a memory budget.

    python -m benchmarks.million                      # GPT-2 small, 2^20 features, 256 tokens
    python -m benchmarks.million --size tiny          # seconds
    nohup python -m benchmarks.million --batch 8 --seq 256 > million.log 2>&1 &   # 2,048 tokens

What is timed: the two dense sweeps (`transport_operators`, independent of the number of
features: 2 x d_model linearized passes over the sample), then one `query_lens` call per side
over all features with those operators (`self_check=False`), then a separate small
`query_lens` call with the self-check on (3 features against per-feature transport) whose
top-k rows must equal the big call's rows for the same features. Peak memory is this
process's maximum RSS, sampled per phase; the budget (`--memory-budget-gb`) drives the
kernel's chunk sizes. The dictionary itself (2 x n_features x d_model float32, 6 GiB at 2^20)
is an input and is reported separately: it is built on the device in place and complete before
`rss_after_dictionary_gb` is read (`builders.synthetic_dictionary`), so no part of its
construction lands in a readout's `peak_rss_above_dictionary_gb`.

Results: `benchmarks/results/million-<size>-<device>.json`.
"""

from __future__ import annotations

import argparse
import hashlib
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks import authors, builders, common, machine, sizes
from benchmarks.contestant import add_contestant_arguments
from benchmarks.roofline import job_flops

PATH_ARGUMENTS = ("operators", "out", "authors_repo", "authors_python", "authors_workdir")
SIZES = sizes.MILLION


class RssSampler:
    """Maximum resident size of this process over a phase (sampled every `interval` s)."""

    def __init__(self, interval: float = 0.25):
        self.interval, self.peak, self._stop = interval, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, machine.current_rss_gb())
            time.sleep(self.interval)

    def __enter__(self):
        self.peak = machine.current_rss_gb()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, machine.current_rss_gb())


def _digest(*arrays) -> str:
    import numpy as np

    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2-small")
    parser.add_argument("--features", type=int, help="features in the dictionary (default: 2^20; tiny: 2^16)")
    parser.add_argument("--layer", type=int, help="dictionary layer (default 6; tiny 2)")
    parser.add_argument("--batch", type=int, help="sequences in the token sample")
    parser.add_argument("--seq", type=int, help="tokens per sequence")
    parser.add_argument("--lenses", nargs="+", default=["query_lens_value", "query_lens_key"])
    parser.add_argument(
        "--vocab",
        type=int,
        help="override the vocabulary size (a cheap memory check of the "
        "feature-count-dependent buffers: the readout FLOPs scale with the vocabulary)",
    )
    parser.add_argument(
        "--synthetic-operators",
        action="store_true",
        help="skip the sweeps and use identity operators (readout-only timing and memory check)",
    )
    parser.add_argument(
        "--operators",
        metavar="DIR",
        help="dense operators saved by `benchmarks.throughput --save-operators DIR` for the same model, "
        "seed and token sample (their sweep times are read from that run's JSON)",
    )
    parser.add_argument(
        "--memory-budget-gb", type=float, help="the kernel's memory budget (GiB; default 8, gemma2 sizes: their own)"
    )
    parser.add_argument("--feature-chunk", type=int, help="override the readout's feature chunk")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/million-<size>-<device>.json)")
    parser.add_argument(
        "--contestant-features",
        type=int,
        default=3,
        help="features per side timed with the contestant (--authors-repo)",
    )
    add_contestant_arguments(parser)
    parser.add_argument("--slice-features", type=int, help="gemma2 sizes: features of the measured slice")
    args = parser.parse_args(argv)
    if "shape" in SIZES[args.size]:
        if args.authors_repo or args.operators or args.vocab:
            raise SystemExit(
                f"--size {args.size}: planned and measured by a slice; --authors-repo, --operators and --vocab "
                "are for the GPT-2 sizes"
            )
        return gemma2_main(args)
    args.memory_budget_gb = args.memory_budget_gb or 8.0
    if args.authors_repo and args.synthetic_operators:
        raise SystemExit(
            "--authors-repo: not with --synthetic-operators (identity operators cannot agree with a real run)"
        )
    if args.authors_repo:
        bad = [lens for lens in args.lenses if lens not in authors.SIDES]
        if bad:
            raise SystemExit(
                f"--authors-repo: the authors' run loop is timed for {sorted(authors.SIDES)} only, not {bad}"
            )
        contestant = authors.describe(authors.check_repo(args.authors_repo), authors.check_python(args.authors_python))
    else:
        contestant = None

    import qlens_jax  # noqa: F401  (XLA flags first)
    from qlens_jax import (
        ExecutionOptions,
        TransportOperators,
        plan_request,
        query_lens,
        read_signatures,
        transport_operators,
    )
    from qlens_jax.lens.chunks import plan_chunks
    from qlens_jax.readout import feature_chunk_for

    size = SIZES[args.size]
    n_features = args.features or size["features"]
    layer = size["layer"] if args.layer is None else args.layer
    batch, seq = args.batch or size["batch"], args.seq or size["seq"]
    recorded_args = {k: common.portable_path(v) if k in PATH_ARGUMENTS else v for k, v in vars(args).items()}
    out = {
        "benchmark": "million",
        "size": args.size,
        "machine": machine.machine_info(),
        "args": recorded_args,
        "contestant": contestant and authors.recorded(contestant),
    }
    common.log("machine", out["machine"]["cpu"], out["machine"]["device"], "load", machine.loadavg())
    picks = np.asarray(builders.feature_picks(n_features, 3))
    if contestant:
        # First, before this process holds a model or a dictionary: the shared inputs hold the
        # whole SAE once more while they are written.
        import tempfile

        contestant_cfg = dict(
            hf={**size["hf"], **({"vocab_size": args.vocab} if args.vocab else {})},
            seed=args.seed,
            features=n_features,
            layers=(layer,),
            batch=batch,
            seq=seq,
            lenses=tuple(args.lenses),
            picks=builders.feature_picks(n_features, args.contestant_features),
        )
        with tempfile.TemporaryDirectory(prefix="qlens-authors-") as tmp:
            out["contestant_run"] = authors.run_contestant(
                contestant_cfg, Path(contestant["repo"]), contestant["python"], args.authors_workdir or tmp
            )
        common.log(f"contestant done: {contestant['label']}; residual caches {out['contestant_run']['cache_seconds']}")

    t0 = time.perf_counter()
    hf = builders.hf_gpt2({**size["hf"], **({"vocab_size": args.vocab} if args.vocab else {})}, args.seed)
    model = builders.jax_model(hf)
    del hf
    cfg = model.config
    tokens, mask = builders.token_sample(cfg.vocab_size, batch, seq, args.seed)
    rss_model = machine.current_rss_gb()
    dictionary = builders.synthetic_dictionary(
        cfg.d_model, n_features, layer, args.seed, name=f"synthetic-{n_features}"
    )
    rss_dict = machine.current_rss_gb()
    plan = plan_chunks(model, tokens.shape, args.memory_budget_gb)
    feature_chunk = args.feature_chunk or feature_chunk_for(cfg.vocab_size, 0.25 * args.memory_budget_gb * 2**30)
    out["setup"] = {
        "seconds": round(time.perf_counter() - t0, 2),
        "model": dict(d_model=cfg.d_model, n_layers=cfg.n_layers, vocab=cfg.vocab_size),
        "n_features": n_features,
        "layer": layer,
        "tokens": int(mask.sum()),
        "batch": batch,
        "seq": seq,
        "rss_after_model_gb": round(rss_model, 3),
        "rss_after_dictionary_gb": round(rss_dict, 3),
        "dictionary_gb": round(2 * n_features * cfg.d_model * 4 / 2**30, 3),
        "scores_matrix_gb_if_materialized": round(n_features * cfg.vocab_size * 4 / 2**30, 1),
        "plan": dict(
            sequences_per_chunk=plan.sequences_per_chunk, tangent_chunk=plan.tangent_chunk, feature_chunk=feature_chunk
        ),
    }
    common.log("setup", out["setup"])

    sides = {"query_lens_value": "value", "query_lens_key": "key"}
    sweeps = {}
    if args.operators:
        loaded = common.load_benchmark_operators(
            args.operators, size["hf"] | ({"vocab_size": args.vocab} if args.vocab else {}), args.seed, tokens, mask
        )
        sweeps = {"value": loaded, "key": loaded}
        out["sweeps"] = {
            "note": f"operators loaded from {common.portable_path(args.operators)} (computed by benchmarks.throughput on the same "
            "model, seed and token sample; its JSON has the sweep times, for all 12 layers)"
        }
    elif args.synthetic_operators:
        import jax.numpy as jnp

        from qlens_jax.lens.points import n_key_points, n_points

        eye = jnp.eye(cfg.d_model, dtype=jnp.float32)
        fake = TransportOperators(
            value=jnp.broadcast_to(eye, (n_points(cfg.n_layers), cfg.d_model, cfg.d_model)),
            key=jnp.broadcast_to(eye, (n_key_points(cfg.n_layers), cfg.d_model, cfg.d_model)),
            first_order=None,
            first_order_all=None,
            n_tokens=int(mask.sum()),
        )
        sweeps = {"value": fake, "key": fake}
        out["sweeps"] = {"note": "synthetic identity operators: sweeps skipped (readout-only run)"}
    for lens in [] if sweeps else args.lenses:
        side = sides[lens]
        with RssSampler() as rss:
            ops, seconds = machine.timed(
                transport_operators, model, tokens, mask, sweeps=(side,), plan=plan, quiet=False
            )
        sweeps[side] = ops
        out.setdefault("sweeps", {})[side] = {
            "seconds": round(seconds, 2),
            "peak_rss_gb": round(rss.peak, 3),
            "loadavg": machine.loadavg(),
        }
        common.log(f"{side} sweep", out["sweeps"][side])
    operators = TransportOperators(
        value=sweeps["value"].value if "value" in sweeps else None,
        key=sweeps["key"].key if "key" in sweeps else None,
        first_order=None,
        first_order_all=None,
        n_tokens=int(mask.sum()),
    )

    readout_flops = 2 * n_features * cfg.d_model * cfg.vocab_size
    tables = {}
    for lens in args.lenses:
        before = machine.loadavg()
        with RssSampler() as rss:
            plan = plan_request(
                model,
                dictionary,
                tokens,
                mask,
                lenses=(lens,),
                execution=ExecutionOptions(
                    path="dense", self_check=False, memory_budget_gb=args.memory_budget_gb, feature_chunk=feature_chunk
                ),
            )
            sigs, seconds = machine.timed(read_signatures, plan, operators)  # the readout stage alone
        table = sigs[0]
        tables[lens] = table
        record = {
            "seconds": round(seconds, 2),
            "features_per_s": round(n_features / seconds, 1),
            "readout_flops": readout_flops,
            "achieved_flops_per_s": readout_flops / seconds,
            "peak_rss_gb": round(rss.peak, 3),
            "peak_rss_above_dictionary_gb": round(rss.peak - rss_dict, 3),
            "top_ids_shape": list(table.top_ids.shape),
            "digest": _digest(table.top_ids, table.bottom_ids),
            "loadavg_before": before,
            "loadavg_after": machine.loadavg(),
        }
        out.setdefault("readouts", {})[lens] = record
        common.log(f"{lens} readout", record)
        common.write_json(_path(args), out)  # partial results survive an interruption

    # Self-check: a few features through query_lens with self_check=True (dense vs per-feature
    # transport); their rows must equal the big call's rows.
    with RssSampler() as rss:
        check, seconds = machine.timed(
            query_lens,
            model,
            dictionary,
            tokens,
            mask,
            lenses=tuple(args.lenses),
            features=picks,
            operators=operators,
            path="dense",
            self_check=not args.synthetic_operators,
            memory_budget_gb=args.memory_budget_gb,
            quiet=True,
        )
    same = all(np.array_equal(t.top_ids, tables[t.lens].top_ids[picks]) for t in check)
    out["self_check"] = {
        "features": picks.tolist(),
        "passed": None if args.synthetic_operators else True,
        "rows_equal_full_run": bool(same),
        "seconds": round(seconds, 2),
    }
    common.log("self-check", out["self_check"])

    peak = machine.matmul_peak()
    out["matmul_peak"] = peak
    for record in out["readouts"].values():
        record["fraction_of_matmul_peak"] = round(record["achieved_flops_per_s"] / peak["flops_per_s"], 3)
    common.log(
        f"matmul peak {peak['flops_per_s'] / 1e9:.1f} GFLOP/s; readout fractions "
        f"{[r['fraction_of_matmul_peak'] for r in out['readouts'].values()]}"
    )
    total = sum(s["seconds"] for s in out["sweeps"].values() if isinstance(s, dict)) + sum(
        r["seconds"] for r in out["readouts"].values()
    )
    out["total_seconds"] = round(total, 2)
    if contestant:
        out["comparison"] = compare_with_contestant(out, tables, layer, n_features)
        if not out["comparison"]["passed"]:
            path = common.write_json(_path(args), out)
            print(f"contestant: {contestant['label']}")
            print(
                f"AGREEMENT FAILED: {len(out['comparison']['mismatches'])} lists differ from the contestant's; no ratio reported. "
                f"Wrote {path}"
            )
            return out
        for lens, c in out["comparison"]["sides"].items():
            common.log(
                f"{lens}: {contestant['label']}: {common.fmt_seconds(c['contestant_seconds_extrapolated'])} for "
                f"{n_features} features (EXTRAPOLATED from {c['features_timed']} features + its residual cache "
                f"{c['contestant_cache_seconds']:.1f} s); qlens-jax {common.fmt_seconds(c['qlens_seconds'])}; ratio {c['ratio']:.0f}x"
            )
    out["peak"] = machine.peak_memory()
    out["loadavg_at_end"] = machine.loadavg()
    path = common.write_json(_path(args), out)
    common.log(
        f"done: {n_features} features x {len(args.lenses)} sides in {common.fmt_seconds(total)}; "
        f"peak RSS {out['peak']['peak_rss_gb']} GiB (dictionary {out['setup']['dictionary_gb']} GiB); wrote {path}"
    )
    return out


def compare_with_contestant(out: dict, tables: dict, layer: int, n_features: int) -> dict:
    """The contestant's top/bottom-25 ids against this run's rows for the same features (they
    must be identical before any ratio), then per side the contestant's time for every feature
    (its mean per-feature time x n_features + its residual cache) against qlens-jax's (the
    side's sweep + its readout)."""
    run = out["contestant_run"]
    report = {"mismatches": [], "sides": {}}
    for lens, table in tables.items():
        rows = run["results"][f"{lens}/{layer}"]
        for row in rows:
            for which in ("top_ids", "bottom_ids"):
                ours = [int(i) for i in getattr(table, which)[row["feature"]]]
                if ours != row[which]:
                    report["mismatches"].append(
                        {
                            "lens": lens,
                            "feature": row["feature"],
                            "which": which,
                            "qlens": ours,
                            "contestant": row[which],
                        }
                    )
        side = authors.SIDES[lens]
        per_feature = sum(r["seconds"] for r in rows) / len(rows)
        theirs = per_feature * n_features + run["cache_seconds"][side]
        sweep = out["sweeps"].get(side, {})
        ours = (sweep["seconds"] if isinstance(sweep, dict) and "seconds" in sweep else 0.0) + out["readouts"][lens][
            "seconds"
        ]
        report["sides"][lens] = {
            "features_timed": len(rows),
            "contestant_s_per_feature": per_feature,
            "contestant_cache_seconds": run["cache_seconds"][side],
            "contestant_seconds_extrapolated": theirs,
            "qlens_seconds": ours,
            "ratio": theirs / ours,
        }
    report["passed"] = not report["mismatches"]
    if not report["passed"]:
        report.pop("sides")
    return report


# ---------------------------------------------------------------------------------------------
# A million-feature Gemma-2-2B layer: planned, and measured by a slice
# ---------------------------------------------------------------------------------------------

# The share of the float32 matmul peak the sweeps reached in the GPT-2-small headline run
# (docs/benchmarks.md, section 0): the stated rate of the sweep estimate.
SWEEP_SHARE_OF_PEAK = 0.76
GIB = 2**30


def plan_gemma2_layer(spec: dict, job_slice: int) -> dict:
    """Peak memory (GiB) of the million-feature job at one Gemma-2-2B layer, by phase, by
    arithmetic on shapes (nothing is built). The model is float32; the dictionary (2 x features x
    d_model float32, 18 GiB at 2^20 x 2304) does not fit beside it, so the job reads it in slices
    of `job_slice` features: each slice is read out with the same operators and its rows are
    exact (a feature's top-k depends on its own vector only)."""
    import equinox as eqx
    import jax

    from qlens_jax.lens.points import n_key_points, n_points
    from qlens_jax.models import init_transformer
    from qlens_jax.readout import feature_chunk_for

    config = builders.gemma2_model_config(spec["shape"])
    skeleton = eqx.filter_eval_shape(init_transformer, config, jax.random.key(0))
    model = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(skeleton)) / GIB
    d, vocab, n = config.d_model, config.vocab_size, spec["features"]
    operators = (n_points(config.n_layers) + n_key_points(config.n_layers)) * d * d * 4 / GIB
    chunk = feature_chunk_for(vocab, 0.25 * spec["budget"] * GIB)
    results = 2 * n * 2 * 25 * 8 / GIB  # per side: top and bottom 25 ids and scores
    sweeps = {"model_gb": model, "kernel_budget_gb": spec["budget"], "operators_gb": operators}
    readouts = {
        "model_gb": model,
        "operators_gb": operators,
        "dictionary_slice_gb": 2 * job_slice * d * 4 / GIB,
        "readout_chunk_gb": chunk * vocab * 4 * 3 / GIB,
        "results_gb": results,
    }
    peak = max(sum(sweeps.values()), sum(readouts.values()))
    return {
        "parameters": sum(int(np.prod(x.shape)) for x in jax.tree.leaves(skeleton)),
        "d_model": d,
        "vocab": vocab,
        "n_layers": config.n_layers,
        "features": n,
        "job_slice_features": job_slice,
        "slices": -(-n // job_slice),
        "whole_dictionary_gb": 2 * n * d * 4 / GIB,
        "readout_chunk_features": chunk,
        "sweeps_phase_gb": sweeps,
        "readouts_phase_gb": readouts,
        "peak_gb": peak,
        "within_24_gib": peak <= 24.0,
    }


def measure_gemma2_slice(spec: dict, seed: int, slice_features: int) -> dict:
    """Both Query Lens readouts of a `slice_features` slice at the real width and vocabulary, on
    the model cut to `slice_layers` blocks (the readout reads only the final norm, `W_U` and
    `W_E`, whatever the depth), with identity operators (the readout's cost does not depend on
    their values). Each readout is run twice; the second run is the one timed."""
    import jax
    import jax.numpy as jnp

    from qlens_jax import ExecutionOptions, TransportOperators, plan_request, read_signatures
    from qlens_jax.lens.points import n_key_points, n_points
    from qlens_jax.models import init_transformer

    config = builders.gemma2_model_config(spec["shape"], spec["slice_layers"])
    model = init_transformer(config, jax.random.key(seed))
    tokens, mask = builders.token_sample(config.vocab_size, spec["batch"], spec["seq"], seed)
    layer = min(spec["layer"], config.n_layers - 1)
    dictionary = builders.synthetic_dictionary(config.d_model, slice_features, layer, seed)
    rss_dictionary = machine.current_rss_gb()
    eye = jnp.eye(config.d_model, dtype=jnp.float32)
    operators = TransportOperators(
        value=jnp.broadcast_to(eye, (n_points(config.n_layers), config.d_model, config.d_model)),
        key=jnp.broadcast_to(eye, (n_key_points(config.n_layers), config.d_model, config.d_model)),
        first_order=None,
        first_order_all=None,
        n_tokens=int(mask.sum()),
    )
    out = {"slice_features": slice_features, "model_layers": config.n_layers, "readouts": {}}
    for lens in ("query_lens_value", "query_lens_key"):
        with RssSampler() as rss:
            plan = plan_request(
                model,
                dictionary,
                tokens,
                mask,
                lenses=(lens,),
                execution=ExecutionOptions(path="dense", self_check=False, memory_budget_gb=spec["budget"]),
            )
            _, first = machine.timed(read_signatures, plan, operators)
            sigs, seconds = machine.timed(read_signatures, plan, operators)
        out["readouts"][lens] = {
            "first_call_s": first,
            "seconds": seconds,
            "peak_rss_gb": round(rss.peak, 3),
            "peak_rss_above_dictionary_gb": round(rss.peak - rss_dictionary, 3),
            "rows": list(sigs[0].top_ids.shape),
        }
        common.log(
            f"gemma2 slice: {lens} readout of {slice_features} features {seconds:.1f} s (first call {first:.1f} s)"
        )
    return out


def gemma2_main(args) -> dict:
    """`--size gemma2-2b`: the plan, a measured slice, and the whole job extrapolated (see
    `extrapolate_gemma2`)."""
    import qlens_jax  # noqa: F401  (XLA flags first)

    spec = dict(SIZES[args.size])
    spec["budget"] = args.memory_budget_gb or spec["budget"]
    if args.features:
        spec["features"] = args.features
    slice_features = args.slice_features or spec["slice_features"]
    out = {
        "benchmark": "million",
        "size": args.size,
        "machine": machine.machine_info(),
        "plan": plan_gemma2_layer(spec, job_slice=min(spec["features"], 131072)),
    }
    common.log("plan", {k: v for k, v in out["plan"].items() if not isinstance(v, dict)})
    out["slice"] = measure_gemma2_slice(spec, args.seed, slice_features)
    # The planned readout chunk against what the slice's readouts really held above the model and
    # dictionary (chunk, XLA's workspace, copies of the unembedding): the larger one counts.
    workspace = max(r["peak_rss_above_dictionary_gb"] for r in out["slice"]["readouts"].values())
    readouts = out["plan"]["readouts_phase_gb"]
    out["plan"]["readouts_phase_with_measured_workspace_gb"] = (
        sum(readouts.values()) - readouts["readout_chunk_gb"] + max(workspace, readouts["readout_chunk_gb"])
    )
    out["matmul_peak"] = machine.matmul_peak()
    out["extrapolated"] = extrapolate_gemma2(spec, out["slice"], out["matmul_peak"]["flops_per_s"])
    out["peak"] = machine.peak_memory()
    path = common.write_json(args.out or common.RESULTS / f"million-{args.size}-{machine.device_slug()}.json", out)
    e = out["extrapolated"]
    common.log(
        f"{spec['features']} features at layer {spec['layer']}: readouts {common.fmt_seconds(e['readouts_s'])} "
        f"(measured slice x {e['slice_factor']:.0f}), sweeps {common.fmt_seconds(e['sweeps_s_estimated'])} "
        f"(ESTIMATED); planned peak {out['plan']['peak_gb']:.1f} GiB; wrote {path}"
    )
    return out


def extrapolate_gemma2(spec: dict, measured: dict, peak_flops_per_s: float) -> dict:
    """The whole job from the slice: readouts = the slice's timed readouts x features / slice
    (every chunk of features is the same program, so the time is linear in the features);
    sweeps = their FLOPs (`roofline.job_flops` on the full model, the blocks the layer needs)
    at `SWEEP_SHARE_OF_PEAK` of the float32 matmul peak measured in this run: an estimate, not a
    measurement (`benchmarks.device_check` measures them on a GPU)."""
    config = builders.gemma2_model_config(spec["shape"])
    layer, tokens = spec["layer"], spec["batch"] * spec["seq"]
    factor = spec["features"] / measured["slice_features"]
    readouts = sum(r["seconds"] for r in measured["readouts"].values()) * factor
    flops = job_flops(config, tokens, spec["seq"], config.n_layers - layer - 1, layer + 1, 2, spec["features"])
    sweeps = flops["sweep"] / (SWEEP_SHARE_OF_PEAK * peak_flops_per_s)
    return {
        "method": "readouts: slice x features / slice_features; sweeps: FLOPs at "
        f"{SWEEP_SHARE_OF_PEAK:.0%} of the measured float32 matmul peak (ESTIMATED)",
        "slice_factor": factor,
        "tokens": tokens,
        "readouts_s": readouts,
        "sweep_flops": flops["sweep"],
        "readout_flops": flops["readout"],
        "sweeps_s_estimated": sweeps,
        "total_s": readouts + sweeps,
    }


def gemma2_layer_job(spec: dict, seed: int, job_slice: int) -> dict:
    """The whole million-feature job at one layer of the full model, on the device: both sweeps
    (restricted to the blocks the layer needs), then both readouts of every feature, slice by
    slice (`plan_gemma2_layer`): the measured job `benchmarks.device_check` runs on a GPU."""
    import jax

    from qlens_jax import ExecutionOptions, plan_request, read_signatures, transport_operators
    from qlens_jax.lens.points import residual_point
    from qlens_jax.models import init_transformer

    config = builders.gemma2_model_config(spec["shape"])
    model = init_transformer(config, jax.random.key(seed))
    tokens, mask = builders.token_sample(config.vocab_size, spec["batch"], spec["seq"], seed)
    point = residual_point("resid_post", spec["layer"], config.n_layers)
    operators, sweep_s = machine.timed(
        transport_operators,
        model,
        tokens,
        mask,
        sweeps=("value", "key"),
        value_from_point=point,
        key_to_point=point,
        memory_budget_gb=spec["budget"],
        quiet=True,
    )
    readout_s, rows = 0.0, 0
    for start in range(0, spec["features"], job_slice):
        dictionary = builders.synthetic_dictionary(
            config.d_model, min(job_slice, spec["features"] - start), spec["layer"], seed + start
        )
        plan = plan_request(
            model,
            dictionary,
            tokens,
            mask,
            lenses=("query_lens_value", "query_lens_key"),
            execution=ExecutionOptions(path="dense", self_check=False, memory_budget_gb=spec["budget"]),
        )
        sigs, seconds = machine.timed(read_signatures, plan, operators)
        readout_s, rows = readout_s + seconds, rows + len(sigs[0].feature_ids)
        del dictionary, plan, sigs
    return {
        "features": rows,
        "layer": spec["layer"],
        "tokens": int(mask.sum()),
        "job_slice_features": job_slice,
        "sweep_s": sweep_s,
        "readout_s": readout_s,
        "total_s": sweep_s + readout_s,
    }


def _path(args):
    vocab = (f"-vocab{args.vocab}" if args.vocab else "") + ("-readout-only" if args.synthetic_operators else "")
    return args.out or common.RESULTS / f"million-{args.size}{vocab}-{machine.device_slug()}.json"


if __name__ == "__main__":
    main()
