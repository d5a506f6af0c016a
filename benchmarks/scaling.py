"""Scaling: how the cost of qlens-jax grows along each axis alone.

Axes (each point runs in its own spawned process, so its peak memory is its own):

- `features`: features per layer (1K .. 2^20, synthetic dictionaries). Readout only: one
  `read_signatures(plan, operators)` call per side with fixed (synthetic) operators, i.e. the
  kernel's real readout path; the sweeps do not depend on the number of features and are
  measured once (`tokens` axis at `--tokens`). Reported: time, peak RSS (and RSS above
  setup), and the readout's achieved FLOP/s (`2 * n_features * d_model * vocab` per side)
  against the device's matmul peak measured in the same process just before.
- `tokens`: tokens in the sample. The two dense sweeps, estimated from the kernel's own
  building blocks: linearize once, then `r` basis vectors through the linear map (sequential
  `lax.map`, as the kernel does on CPU), timed at two values of `r`: full sweep =
  fixed + d_model x per-vector (`--validate-sweeps` compares that estimate with a real
  `transport_operators` call). Also the reference's time per feature (one torch pass).
- `layers`: number of transformer blocks (sweeps, as above; the readout is per layer and does
  not depend on depth).
- `vocab`: vocabulary size (readout of `--vocab-features` features per side).

Also the device's matmul peak (a large float32 `jnp.matmul`, `--matmul-n`) at start and end.

    python -m benchmarks.scaling --size tiny                  # seconds
    python -m benchmarks.scaling                              # GPT-2-small dims, default axes (~20 min, 2 CPU cores)
    python -m benchmarks.scaling --axes features --features 1024 4096 16384 65536 262144 1048576

Writes `benchmarks/results/scaling-<size>-<device>.json` and `scaling-<size>-<device>-<axis>.png`
(time and memory versus each axis). A `million-<size>-<device>.json` from
`benchmarks.million` in the same folder adds its point to the features plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks import builders, common, machine

SIZES = {
    "gpt2-small": dict(
        d_model=768,
        vocab=50257,
        n_layers=12,
        n_heads=12,
        features=[1024, 4096, 16384, 65536],
        tokens_axis=[64, 128, 256, 512],
        layers_axis=[1, 2, 4, 8, 12],
        vocab_axis=[8192, 16384, 32768, 50257, 100000, 200000],
        tokens=128,
        vocab_features=2048,
        r=(1, 4),
    ),
    "tiny": dict(
        d_model=64,
        vocab=2048,
        n_layers=4,
        n_heads=4,
        features=[1024, 4096, 16384, 65536],
        tokens_axis=[32, 64, 128],
        layers_axis=[1, 2, 4],
        vocab_axis=[1024, 2048, 8192],
        tokens=64,
        vocab_features=1024,
        r=(2, 8),
    ),
}
AXES = ("features", "tokens", "layers", "vocab")


def _config(size: dict, n_layers=None, vocab=None):
    import transformers

    from converters import model_config_from_hf

    hf = transformers.GPT2Config(
        n_embd=size["d_model"],
        n_layer=n_layers or size["n_layers"],
        n_head=size["n_heads"],
        vocab_size=vocab or size["vocab"],
        n_positions=max(1024, max(size["tokens_axis"])),
    )
    return model_config_from_hf(hf.to_dict())


def _model(size, n_layers=None, vocab=None, seed=0):
    import jax

    from qlens_jax.models import init_transformer

    return init_transformer(_config(size, n_layers, vocab), jax.random.key(seed))


def _tokens(vocab, n_tokens, seed=0):
    seq = min(n_tokens, 1024)
    batch = max(1, n_tokens // seq)
    return builders.token_sample(vocab, batch, seq, seed)


# ---------------------------------------------------------------------------------------------
# Readout (features and vocab axes)
# ---------------------------------------------------------------------------------------------


def measure_readout(
    size: dict, n_features: int, vocab: int | None, sides: list[str], budget: float, repeat: bool
) -> dict:
    import jax.numpy as jnp

    from qlens_jax import ExecutionOptions, TransportOperators, plan_request, read_signatures
    from qlens_jax.lens.points import n_key_points, n_points

    model = _model(size, n_layers=1, vocab=vocab)
    d, V = model.config.d_model, model.config.vocab_size
    tokens, mask = _tokens(V, 64)
    eye = jnp.eye(d, dtype=jnp.float32)
    operators = TransportOperators(
        value=jnp.broadcast_to(eye, (n_points(1), d, d)),
        key=jnp.broadcast_to(eye, (n_key_points(1), d, d)),
        first_order=None,
        first_order_all=None,
        n_tokens=int(mask.sum()),
    )
    dictionary = builders.synthetic_dictionary(d, n_features, 0, 0)
    setup = machine.current_rss_gb()
    peak = machine.matmul_peak(n=2048, repeats=3)
    out = {
        "n_features": n_features,
        "d_model": d,
        "vocab": V,
        "rss_setup_gb": round(setup, 3),
        "matmul_peak_same_process": peak["flops_per_s"],
        "sides": {},
    }
    flops = 2 * n_features * d * V
    for side in sides:
        lens = f"query_lens_{side}"
        plan = plan_request(
            model,
            dictionary,
            tokens,
            mask,
            lenses=(lens,),
            execution=ExecutionOptions(path="dense", self_check=False, memory_budget_gb=float(budget)),
        )
        call = lambda: read_signatures(plan, operators)  # noqa: E731  (the readout stage alone)
        _, first = machine.timed(call)
        times = [first]
        if repeat and first < 60:
            times.append(machine.timed(call)[1])
        best = min(times)
        out["sides"][side] = {
            "seconds": best,
            "times_s": times,
            "flops": flops,
            "achieved_flops_per_s": flops / best,
            "fraction_of_peak": flops / best / peak["flops_per_s"],
            "rss_gb": round(machine.current_rss_gb(), 3),
        }
    out["loadavg"] = machine.loadavg()
    return out


# ---------------------------------------------------------------------------------------------
# Sweeps (tokens and layers axes)
# ---------------------------------------------------------------------------------------------


def _partial_sweeps():
    """The kernel's sweep building blocks on `r` basis vectors (as in `operators.py`)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from qlens_jax.lens import transport
    from qlens_jax.lens.points import n_points

    def basis(j, d, mask):
        return jnp.where(mask[..., None], jax.nn.one_hot(j, d, dtype=jnp.float32), 0.0)

    @eqx.filter_jit
    def value(model, tokens, mask, idx):
        d = model.config.d_model
        zeros = jnp.zeros((n_points(model.config.n_layers), d), jnp.float32)
        _, pull = jax.vjp(lambda deltas: transport.final_from_probes(model, tokens, mask, deltas), zeros)
        return jax.lax.map(lambda i: pull(basis(i, d, mask))[0], idx)

    @eqx.filter_jit
    def key(model, tokens, mask, idx):
        d = model.config.d_model
        zeros = jnp.zeros((*tokens.shape, d), jnp.float32)
        stream = lambda d0: transport.masked_sum(transport.points_from_embedding(model, tokens, mask, d0), mask)
        _, push = jax.linearize(stream, zeros)
        return jax.lax.map(lambda j: push(basis(j, d, mask)), idx)

    return {"value": value, "key": key}


def measure_sweeps(
    size: dict, n_tokens: int, n_layers: int | None, r: tuple[int, int], validate: bool, reference: bool
) -> dict:
    import jax.numpy as jnp

    model = _model(size, n_layers=n_layers)
    d = model.config.d_model
    tokens, mask = _tokens(model.config.vocab_size, n_tokens)
    jt, jm = jnp.asarray(tokens), jnp.asarray(mask)
    out = {
        "tokens": int(mask.sum()),
        "n_layers": model.config.n_layers,
        "r": list(r),
        "rss_setup_gb": round(machine.current_rss_gb(), 3),
        "sides": {},
    }
    for side, fn in _partial_sweeps().items():
        runs = {}
        for count in r:
            idx = jnp.arange(count)
            start = time.perf_counter()
            compiled = fn.lower(model, jt, jm, idx).compile()
            compile_s = time.perf_counter() - start
            _, seconds = machine.timed(compiled, model, jt, jm, idx)
            runs[count] = {"compile_s": compile_s, "seconds": seconds}
        (r1, t1), (r2, t2) = ((c, runs[c]["seconds"]) for c in r)
        per_vector = max((t2 - t1) / (r2 - r1), 1e-9)
        fixed = max(t1 - r1 * per_vector, 0.0)
        out["sides"][side] = {
            "runs": runs,
            "per_vector_s": per_vector,
            "fixed_s": fixed,
            "estimated_sweep_s": fixed + d * per_vector,
            "rss_gb": round(machine.current_rss_gb(), 3),
        }
    if validate:
        from qlens_jax import transport_operators

        for side in ("value", "key"):
            _, seconds = machine.timed(transport_operators, model, tokens, mask, sweeps=(side,))
            out["sides"][side]["measured_sweep_s_incl_compile"] = seconds
    if reference:
        out["reference"] = _reference_per_feature(size, model.config.n_layers, tokens, mask)
    out["loadavg"] = machine.loadavg()
    return out


def _reference_per_feature(size, n_layers, tokens, mask) -> dict:
    """Seconds per feature of the torch reference (one pass), per side, after a warm-up pass."""
    import numpy as np

    from benchmarks import reference_torch as ref

    hf = builders.hf_gpt2(
        dict(
            n_embd=size["d_model"],
            n_layer=n_layers,
            n_head=size["n_heads"],
            vocab_size=size["vocab"],
            n_positions=max(1024, tokens.shape[1]),
        ),
        0,
    )
    ref.prepare_model(hf)
    rng = np.random.default_rng(0)
    v = rng.standard_normal(size["d_model"]).astype(np.float32)
    layer = n_layers // 2
    out = {"layer": layer}
    for lens, fn in (("value", ref.value_transport), ("key", ref.key_transport)):
        fn(hf, tokens, mask, v, "resid_post", layer)  # warm-up
        start = time.perf_counter()
        fn(hf, tokens, mask, v, "resid_post", layer)
        out[lens] = time.perf_counter() - start
    return out


# ---------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------


def plot(results: dict, size_name: str, device: str, folder) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def finish(fig, axis):
        path = folder / f"scaling-{size_name}-{device}-{axis}.png"
        fig.suptitle(
            f"qlens-jax scaling ({size_name} dims, {results['machine']['cpu']} x{results['machine']['cores']}, {device}); "
            f"load {results['machine']['loadavg_at_start'][0]}",
            fontsize=9,
        )
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))

    if results.get("features"):
        pts = sorted(results["features"], key=lambda p: p["n_features"])
        extra = results.get("million")
        fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 4.2))
        for side, marker in (("value", "o"), ("key", "s")):
            xs = [p["n_features"] for p in pts if side in p["sides"]]
            a.plot(
                xs,
                [p["sides"][side]["seconds"] for p in pts if side in p["sides"]],
                marker=marker,
                label=f"readout ({side})",
            )
            c.plot(
                xs,
                [100 * p["sides"][side]["fraction_of_peak"] for p in pts if side in p["sides"]],
                marker=marker,
                label=side,
            )
            if extra and side in extra:
                a.plot(
                    [extra["n_features"]],
                    [extra[side]["seconds"]],
                    marker="*",
                    markersize=12,
                    linestyle="none",
                    label=f"million run ({side})",
                )
        if results.get("sweep_at_default_tokens"):
            for side, ls in (("value", "--"), ("key", ":")):
                a.axhline(
                    results["sweep_at_default_tokens"][side],
                    linestyle=ls,
                    color="gray",
                    label=f"{side} sweep ({results['sweep_at_default_tokens']['tokens']} tokens), all layers",
                )
        a.set(
            xscale="log",
            yscale="log",
            xlabel="features per layer",
            ylabel="seconds",
            title="time (one layer, one side)",
        )
        a.legend(fontsize=7)
        xs = [p["n_features"] for p in pts]
        b.plot(xs, [p["peak_rss_gb"] for p in pts], marker="o", label="peak RSS")
        b.plot(xs, [p["peak_rss_gb"] - p["rss_setup_gb"] for p in pts], marker="s", label="peak - setup (readout)")
        b.plot(
            xs,
            [p["n_features"] * p["vocab"] * 4 / 2**30 for p in pts],
            linestyle="--",
            color="gray",
            label="n x vocab scores (not held)",
        )
        if extra:
            b.plot(
                [extra["n_features"]],
                [extra["peak_rss_gb"]],
                marker="*",
                markersize=12,
                linestyle="none",
                label="million run peak",
            )
        if results.get("budget_gb"):
            b.axhline(results["budget_gb"], color="red", linestyle=":", label=f"budget {results['budget_gb']} GiB")
        b.set(xscale="log", yscale="log", xlabel="features per layer", ylabel="GiB", title="memory")
        b.legend(fontsize=7)
        c.axhline(50, color="red", linestyle=":", label="target 50 %")
        c.set(
            xscale="log",
            ylim=(0, 110),
            xlabel="features per layer",
            ylabel="% of measured matmul peak",
            title="readout FLOP/s",
        )
        c.legend(fontsize=7)
        finish(fig, "features")

    for axis, key, label in (("tokens", "tokens", "tokens in the sample"), ("layers", "n_layers", "layers")):
        pts = results.get(axis)
        if not pts:
            continue
        pts = sorted(pts, key=lambda p: p[key])
        xs = [p[key] for p in pts]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
        for side, marker in (("value", "o"), ("key", "s")):
            a.plot(
                xs,
                [p["sides"][side]["estimated_sweep_s"] for p in pts],
                marker=marker,
                label=f"{side} sweep (all layers)",
            )
            if all("reference" in p for p in pts):
                a.plot(
                    xs,
                    [p["reference"][side] for p in pts],
                    marker=marker,
                    linestyle=":",
                    label=f"reference, ONE feature ({side})",
                )
        a.set(xscale="log", yscale="log", xlabel=label, ylabel="seconds", title="time")
        a.legend(fontsize=7)
        b.plot(xs, [max(p["peak_rss_gb"], 0) for p in pts], marker="o", label="peak RSS (sweep process)")
        b.set(xscale="log", xlabel=label, ylabel="GiB", title="memory")
        b.legend(fontsize=7)
        finish(fig, axis)

    pts = results.get("vocab")
    if pts:
        pts = sorted(pts, key=lambda p: p["vocab"])
        xs = [p["vocab"] for p in pts]
        fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
        for side, marker in (("value", "o"), ("key", "s")):
            a.plot(
                xs,
                [p["sides"][side]["seconds"] for p in pts],
                marker=marker,
                label=f"readout ({side}), {pts[0]['n_features']} features",
            )
        a.set(xscale="log", yscale="log", xlabel="vocabulary", ylabel="seconds", title="time")
        a.legend(fontsize=7)
        b.plot(xs, [p["peak_rss_gb"] for p in pts], marker="o", label="peak RSS")
        b.plot(xs, [p["peak_rss_gb"] - p["rss_setup_gb"] for p in pts], marker="s", label="peak - setup")
        b.set(xscale="log", xlabel="vocabulary", ylabel="GiB", title="memory")
        b.legend(fontsize=7)
        finish(fig, "vocab")
    return written


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="gpt2-small")
    parser.add_argument("--axes", nargs="+", choices=AXES, default=list(AXES))
    parser.add_argument("--features", type=int, nargs="+", help="features axis points")
    parser.add_argument("--tokens-axis", type=int, nargs="+", help="tokens axis points")
    parser.add_argument("--layers-axis", type=int, nargs="+", help="layers axis points")
    parser.add_argument("--vocab-axis", type=int, nargs="+", help="vocabulary axis points")
    parser.add_argument("--tokens", type=int, help="tokens for the layers axis (and the features plot's sweep line)")
    parser.add_argument("--vocab-features", type=int, help="features per side on the vocab axis")
    parser.add_argument("--r", type=int, nargs=2, help="basis vectors timed per sweep estimate (two counts)")
    parser.add_argument("--sides", nargs="+", default=["value", "key"], choices=["value", "key"])
    parser.add_argument("--memory-budget-gb", type=float, default=8.0)
    parser.add_argument("--matmul-n", type=int, default=4096)
    parser.add_argument("--no-reference", action="store_true", help="skip the torch reference on the tokens axis")
    parser.add_argument(
        "--validate-sweeps", action="store_true", help="also run real transport_operators (full d_model sweeps)"
    )
    parser.add_argument("--out", help="JSON path (default benchmarks/results/scaling-<size>-<device>.json)")
    parser.add_argument("--plot-only", action="store_true", help="redraw the plots from the JSON")
    args = parser.parse_args(argv)

    size = dict(SIZES[args.size])
    device = machine.device_slug()
    path = common.Path(args.out) if args.out else common.RESULTS / f"scaling-{args.size}-{device}.json"
    if args.plot_only:
        results = json.loads(path.read_text())
        _add_million(results, args.size, device)
        common.write_json(path, results)
        print("\n".join(plot(results, args.size, device, path.parent)))
        return 0
    tokens = args.tokens or size["tokens"]
    r = tuple(args.r or size["r"])
    results = {
        "benchmark": "scaling",
        "size": args.size,
        "machine": machine.machine_info(),
        "budget_gb": args.memory_budget_gb,
        "args": vars(args),
    }
    results["matmul_peak"] = {"start": common.run_isolated(machine.matmul_peak, n=args.matmul_n)}
    common.log(
        f"matmul peak {results['matmul_peak']['start']['flops_per_s'] / 1e9:.1f} GFLOP/s (n={args.matmul_n}); load {machine.loadavg()}"
    )

    def save():
        common.write_json(path, results)

    if "features" in args.axes:
        results["features"] = []
        for n in args.features or size["features"]:
            p = common.run_isolated(
                measure_readout,
                size=size,
                n_features=n,
                vocab=None,
                sides=args.sides,
                budget=args.memory_budget_gb,
                repeat=True,
            )
            results["features"].append(p)
            common.log(
                f"features {n}: "
                + ", ".join(
                    f"{s} {v['seconds']:.2f} s ({100 * v['fraction_of_peak']:.0f}% of peak)"
                    for s, v in p["sides"].items()
                )
                + f"; peak RSS {p['peak_rss_gb']} GiB"
            )
            save()
    if "tokens" in args.axes:
        results["tokens"] = []
        for n in args.tokens_axis or size["tokens_axis"]:
            p = common.run_isolated(
                measure_sweeps,
                size=size,
                n_tokens=n,
                n_layers=None,
                r=r,
                validate=args.validate_sweeps,
                reference=not args.no_reference,
            )
            results["tokens"].append(p)
            common.log(
                f"tokens {n}: "
                + ", ".join(
                    f"{s} sweep ~{v['estimated_sweep_s']:.1f} s ({v['per_vector_s'] * 1e3:.1f} ms/vector "
                    f"+ {v['fixed_s']:.1f} s)"
                    for s, v in p["sides"].items()
                )
                + (f"; reference per feature {p['reference']}" if "reference" in p else "")
                + f"; peak RSS {p['peak_rss_gb']} GiB"
            )
            if p["tokens"] == tokens:
                results["sweep_at_default_tokens"] = {
                    "tokens": tokens,
                    **{s: v["estimated_sweep_s"] for s, v in p["sides"].items()},
                }
            save()
    if "layers" in args.axes:
        results["layers"] = []
        for n in args.layers_axis or size["layers_axis"]:
            p = common.run_isolated(
                measure_sweeps, size=size, n_tokens=tokens, n_layers=n, r=r, validate=False, reference=False
            )
            results["layers"].append(p)
            common.log(
                f"layers {n}: "
                + ", ".join(f"{s} sweep ~{v['estimated_sweep_s']:.1f} s" for s, v in p["sides"].items())
                + f"; peak RSS {p['peak_rss_gb']} GiB"
            )
            save()
    if "vocab" in args.axes:
        results["vocab"] = []
        for v in args.vocab_axis or size["vocab_axis"]:
            p = common.run_isolated(
                measure_readout,
                size=size,
                n_features=args.vocab_features or size["vocab_features"],
                vocab=v,
                sides=args.sides,
                budget=args.memory_budget_gb,
                repeat=True,
            )
            results["vocab"].append(p)
            common.log(
                f"vocab {v}: "
                + ", ".join(
                    f"{s} {x['seconds']:.2f} s ({100 * x['fraction_of_peak']:.0f}% of peak)"
                    for s, x in p["sides"].items()
                )
                + f"; peak RSS {p['peak_rss_gb']} GiB"
            )
            save()
    results["matmul_peak"]["end"] = common.run_isolated(machine.matmul_peak, n=args.matmul_n)
    _add_million(results, args.size, device)
    results["loadavg_at_end"] = machine.loadavg()
    save()
    for p in plot(results, args.size, device, path.parent):
        print("wrote", p)
    print("wrote", path)
    return 0


def _add_million(results: dict, size: str, device: str) -> None:
    """The point of `benchmarks.million`'s full run (`million-<size>-<device>.json`), if there is one."""
    million = common.RESULTS / f"million-{size}-{device}.json"
    if million.exists():
        m = json.loads(million.read_text())
        results["million"] = {
            "n_features": m["setup"]["n_features"],
            "peak_rss_gb": m.get("peak", {}).get("peak_rss_gb"),
            **{k.split("_")[-1]: v for k, v in m.get("readouts", {}).items()},
        }


if __name__ == "__main__":
    sys.exit(main())
