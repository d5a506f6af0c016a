"""Throughput: qlens-jax (dense and per-feature paths) against a per-feature contestant.

Same weights (a randomly initialised `transformers` model of `--size`, seeded; qlens-jax runs
its conversion), same token sample (seeded random ids), same features (a synthetic SAE on
`resid_post` at each benchmarked layer). Each contestant runs in its own process, so that its
peak memory is its own:

- the contestant, timed on `--ref-features` features per layer and side. With
  `--authors-repo DIR` it is the authors' own code (HYU-NLP/query-lens, imported from DIR in a
  process started with `--authors-python`, on TransformerLens weights loaded from the same
  Hugging Face folder and a sae_lens SAE with the same weights; their residual caches are
  built once per side, timed and reported apart: see `benchmarks/authors.py`). Without it,
  `benchmarks/reference_torch.py` (one `torch.func` jvp / vjp pass per feature) stands in, and
  the output and the JSON (`contestant`) say so;
- qlens-jax dense path: the two sweeps (`transport_operators`, once, shared by every layer,
  over the blocks the whole-dictionary job needs; with the budget to keep every block's MLP
  Jacobians, one step for both sides that forms each Jacobian once), then
  the readout stage (`read_signatures(plan, operators)`) over ALL features of each benchmarked layer; and, for
  the single-layer job, the sweep restricted to the blocks that layer needs (value: the blocks
  after it; key: the blocks up to it), as `query_lens` on one layer runs it;
- qlens-jax per-feature path: `query_lens(..., path="per-feature")` on the contestant's features.

Before any speed is printed, the top-25 ids of every feature timed with the contestant must be
identical in all three (against `reference_torch.py`, ties aside: positions whose scores differ
by less than 1e-4 of the score scale may swap; the authors' code returns ids only, so there the
lists must be identical). Then it reports, per lens and layer, features per second, wall
time, peak memory and ratios, and the whole-dictionary job (`--features` at each of the
model's layers, both sides): qlens-jax = sweeps once + readouts per layer (measured at the
benchmarked layers, interpolated between them); contestant = its per-feature times measured in
this run at the benchmarked layers, interpolated over all layers and multiplied out, plus its
residual caches (extrapolated: says so in the output). A single layer's dense time = its
restricted sweep + its readout of all features. The restricted sweep is timed on the first
`--single-layer-seqs` sequences (a sweep is a loop over identical one-sequence steps): a first
call (compilation + run) and a second (run), giving compile + run x batch / seqs; with
`--single-layer-seqs` equal to `--batch` it is simply timed on the whole sample. Last, the
roofline (`benchmarks/roofline.py`): FLOPs of the compiled sweep and readout steps, split into
attention and MLP, and the fraction of the measured float32 matmul peak achieved.

    python -m benchmarks.throughput --size tiny                   # seconds
    python -m benchmarks.throughput --size gpt2-small             # 32,768 features, 2,048 tokens (hours on 2 CPU cores)
    python -m benchmarks.throughput --size gpt2-small --batch 1 --seq 256   # 256 tokens
    python -m benchmarks.throughput --size gpt2-small --authors-repo query-lens \
        --authors-python venv-authors/bin/python           # against the authors' code
    python -m benchmarks.throughput --size gemma3-270m|gemma3-1b|qwen3-1.7b   # the paper's other settings
    python -m benchmarks.throughput --size qwen3-1.7b --paper-sample --dtype bfloat16   # 1024 x 32 tokens, bfloat16
    python -m benchmarks.throughput --size llama-1b               # Llama-3.2-1B shapes, 16,384 features, 256 tokens

Sizes (`benchmarks.sizes.THROUGHPUT`): the paper's four settings have its dictionary widths and
layers; the whole-dictionary job covers the setting's layers. `--dtype bfloat16` stores the
model in bfloat16 on both sides; each side first computes float32 lists for the timed features
(the agreement check is made on those) and the report gives each side's top-25 overlap of
bfloat16 with float32.

Results: `benchmarks/results/throughput-<size>-<device>.json` (machine, device, versions, load).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks import authors, builders, common, machine, roofline, sizes
from benchmarks.contestant import (
    SIDES,
    K,
    add_contestant_arguments,
    bfloat16_overlap,
    check_agreement,
    contestant_dtypes,
    contestant_from_args,
    run_contestant,
)

# ---------------------------------------------------------------------------------------------
# The three contestants (each runs in its own process)
# ---------------------------------------------------------------------------------------------


def _jax_setup(cfg, dtype: str = "float32"):
    """The converted model, stored in `dtype`, its width and the token sample."""
    import qlens_jax  # noqa: F401
    from qlens_jax.numerics import cast_model

    hf, d, tokens, mask = builders.sample_setting(cfg)
    model = builders.jax_model(hf)
    del hf
    return (cast_model(model, dtype) if dtype != "float32" else model), d, tokens, mask


def run_dense(cfg: dict) -> dict:
    from qlens_jax import ExecutionOptions, LensOptions, plan_request, read_signatures, transport_operators

    model, d, tokens, mask = _jax_setup(cfg, cfg["dtype"])
    rss_setup = machine.current_rss_gb()
    out = {"rss_setup_gb": round(rss_setup, 3), "sweeps": {}, "readouts": {}, "readout_first_call_seconds": {}}
    needed = tuple(
        s for s in ("value", "key") if any(SIDES[lens] == s and lens.startswith("query_lens") for lens in cfg["lenses"])
    )
    operators = None
    if needed:
        # The whole-dictionary job's sweeps, as `qlens signatures` runs them for dictionaries on
        # resid_post at the job's layers: values from the first, keys up to the last.
        bounds = builders.job_bounds(cfg["job_layers"], model.config.n_layers)
        operators, seconds = machine.timed(
            transport_operators,
            model,
            tokens,
            mask,
            sweeps=needed,
            memory_budget_gb=cfg["budget"],
            quiet=cfg["quiet"],
            **bounds,
        )
        name = "+".join(needed)
        out["sweeps"][name] = {
            "seconds": seconds,
            "loadavg": machine.loadavg(),
            "rss_gb": round(machine.current_rss_gb(), 3),
        }
        common.log(f"dense: {name} sweep {seconds:.1f} s")
    rss_operators = machine.current_rss_gb()
    out["rss_after_sweeps_gb"] = round(rss_operators, 3)
    if cfg.get("save_operators"):
        common.save_benchmark_operators(operators, cfg["save_operators"], cfg, tokens, mask)
        common.log(f"dense: operators saved to {cfg['save_operators']}")
    out["single_layer_sweeps"] = _single_layer_sweeps(cfg, model, tokens, mask, needed)
    for layer in cfg["layers"]:
        dictionary = builders.synthetic_dictionary(d, cfg["features"], layer, cfg["seed"])
        for lens in cfg["lenses"]:
            # The readout stage alone: the plan (validation) is made before the clock starts.
            plan = plan_request(
                model,
                dictionary,
                tokens,
                mask,
                lenses=(lens,),
                options=LensOptions(k=K, dtype=cfg["dtype"]),
                execution=ExecutionOptions(path="dense", self_check=False, memory_budget_gb=float(cfg["budget"])),
            )
            if lens not in out["readout_first_call_seconds"]:
                # The lens's first readout compiles its step: timed apart (it is paid once per
                # lens), so that `seconds` below is the compiled step's run alone.
                out["readout_first_call_seconds"][lens] = machine.timed(read_signatures, plan, operators)[1]
            sigs, seconds = machine.timed(read_signatures, plan, operators)
            table = sigs[0]
            out["readouts"][f"{lens}/{layer}"] = {
                "seconds": seconds,
                "n_features": int(len(table.feature_ids)),
                "top_ids": table.top_ids[cfg["picks"]].tolist(),
                "bottom_ids": table.bottom_ids[cfg["picks"]].tolist(),
                "loadavg": machine.loadavg(),
            }
            common.log(f"dense: {lens} layer {layer} readout of {len(table.feature_ids)} features {seconds:.1f} s")
    return out


def _single_layer_sweeps(cfg, model, tokens, mask, sides) -> dict:
    """Per layer and side, the sweep one layer's `query_lens` runs (restricted to the blocks it
    needs), timed on the first `single_layer_seqs` sequences and scaled to the whole sample."""
    from qlens_jax import transport_operators
    from qlens_jax.lens.points import residual_point

    seqs = min(cfg["single_layer_seqs"], cfg["batch"])
    sub_tokens, sub_mask = tokens[:seqs], mask[:seqs]
    n_layers = model.config.n_layers
    out = {}
    for layer in cfg["layers"]:
        point = residual_point("resid_post", layer, n_layers)
        for side in sides:
            bound = {"value_from_point": point} if side == "value" else {"key_to_point": point}
            run = lambda: transport_operators(
                model, sub_tokens, sub_mask, sweeps=(side,), memory_budget_gb=cfg["budget"], quiet=True, **bound
            )
            ops, first = machine.timed(run)
            _, second = machine.timed(run)
            compile_s = max(first - second, 0.0)
            estimate = compile_s + second * cfg["batch"] / seqs
            covered = ops.value_from_point if side == "value" else ops.key_to_point
            out[f"{side}/{layer}"] = {
                "first_call_s": first,
                "second_call_s": second,
                "sequences_timed": seqs,
                "seconds_for_sample": estimate,
                "covered_point": covered,
                "loadavg": machine.loadavg(),
            }
            common.log(
                f"dense: single-layer {side} sweep for layer {layer}: {first:.1f} s, then {second:.1f} s on "
                f"{seqs} sequence(s) -> {estimate:.1f} s for {cfg['batch']}"
            )
    return out


def run_per_feature(cfg: dict) -> dict:
    """The per-feature path on the contestant's features: in `cfg["dtype"]` (timed, `results`)
    and, for a bfloat16 run, first in float32 too (`float32_results`: the agreement check's
    lists and the overlap's reference)."""
    from qlens_jax import query_lens

    out = {"results": {}}
    picks = np.asarray(cfg["picks"])
    for dtype in contestant_dtypes(cfg):
        model, d, tokens, mask = _jax_setup(cfg, dtype)
        out.setdefault("rss_setup_gb", round(machine.current_rss_gb(), 3))
        rows = out["results"] if dtype == cfg["dtype"] else out.setdefault("float32_results", {})
        for layer in cfg["layers"]:
            dictionary = builders.synthetic_dictionary(d, cfg["features"], layer, cfg["seed"])
            for lens in cfg["lenses"]:
                run = lambda: query_lens(
                    model,
                    dictionary,
                    tokens,
                    mask,
                    lenses=(lens,),
                    features=picks,  # noqa: E731
                    path="per-feature",
                    self_check=False,
                    k=K,
                    memory_budget_gb=cfg["budget"],
                    dtype=dtype,
                )
                _, compile_s = machine.timed(run)  # first call compiles (same shapes for every layer)
                sigs, seconds = machine.timed(run)  # the second is timed
                rows[f"{lens}/{layer}"] = {
                    "seconds": seconds,
                    "first_call_seconds": compile_s,
                    "n_features": len(picks),
                    "top_ids": sigs[0].top_ids.tolist(),
                    "bottom_ids": sigs[0].bottom_ids.tolist(),
                }
                common.log(
                    f"per-feature ({dtype}): {lens} layer {layer}: {len(picks)} features {seconds:.1f} s "
                    f"(first call {compile_s:.1f} s)"
                )
    return out


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def summarize(cfg, model_config, reference, dense, per_feature, peak: float | None) -> dict:
    """Per lens and layer speeds and ratios; the whole-dictionary job; readout FLOP/s against
    `peak` (the matmul FLOP/s measured in this run; readout FLOPs = 2 x features x d x vocab
    over the compiled step's run). The readout's compilation, timed apart once per lens, is
    added to every job time: single layer and whole dictionary."""
    n = cfg["features"]
    d_model, vocab = model_config.hidden_size, model_config.vocab_size
    # The authors' run builds its residual cache once per side, for every layer and feature.
    cache = reference.get("cache_seconds", {})
    layers = list(cfg["layers"])
    all_layers = np.asarray(cfg["job_layers"])
    per_lens = {}
    whole_ref, whole_dense_readouts = 0.0, 0.0
    for lens in cfg["lenses"]:
        side = SIDES[lens]
        # The one sweep that made this side's operators ("value+key" when both sides shared it).
        sides_sweep = [v["seconds"] for name, v in dense["sweeps"].items() if side in name.split("+")]
        sweep = sides_sweep[0] if sides_sweep and lens.startswith("query_lens") else 0.0
        ref_per_layer, rows = [], []
        readout_per_layer = []
        first_readout = dense.get("readout_first_call_seconds", {}).get(lens)
        first_run = dense["readouts"][f"{lens}/{layers[0]}"]["seconds"]
        compile_s = max(0.0, first_readout - first_run) if first_readout is not None else 0.0
        for layer in layers:
            key = f"{lens}/{layer}"
            ref_s = float(np.mean([r["seconds"] for r in reference["results"][key]]))
            readout = dense["readouts"][key]["seconds"]
            pf = per_feature["results"][key]
            ref_per_layer.append(ref_s)
            readout_per_layer.append(readout)
            restricted = dense.get("single_layer_sweeps", {}).get(f"{side}/{layer}")
            single_sweep = restricted["seconds_for_sample"] if restricted and lens.startswith("query_lens") else sweep
            dense_single = single_sweep + compile_s + readout
            ref_single = ref_s * n + cache.get(side, 0.0)
            readout_flops = 2 * n * d_model * vocab
            rows.append(
                {
                    "layer": layer,
                    "reference_s_per_feature": ref_s,
                    "reference_features_per_s": 1.0 / ref_s,
                    "dense_single_layer_sweep_seconds": single_sweep,
                    "dense_single_layer_seconds": dense_single,
                    "dense_all_layer_sweep_plus_readout_seconds": sweep + readout,
                    "dense_readout_seconds": readout,
                    "dense_readout_compile_seconds": compile_s,
                    "dense_features_per_s": n / dense_single,
                    "reference_cache_seconds": cache.get(side, 0.0),
                    "reference_single_layer_seconds": ref_single,
                    "dense_vs_reference": ref_single / dense_single,
                    "dense_readout_only_features_per_s": n / readout,
                    "dense_readout_flops_per_s": readout_flops / readout,
                    "dense_readout_fraction_of_matmul_peak": readout_flops / readout / peak if peak else None,
                    "per_feature_seconds": pf["seconds"],
                    "per_feature_features_per_s": pf["n_features"] / pf["seconds"],
                    "per_feature_vs_reference": (pf["n_features"] / pf["seconds"]) * ref_s,
                }
            )
        ref_all = np.interp(all_layers, layers, ref_per_layer)
        readout_all = np.interp(all_layers, layers, readout_per_layer)
        whole_ref += float(ref_all.sum()) * n + cache.get(side, 0.0)
        whole_dense_readouts += float(readout_all.sum()) + compile_s
        per_lens[lens] = {"sweep_seconds": sweep, "layers": rows}
    sweeps_total = sum(s["seconds"] for s in dense["sweeps"].values())
    whole_dense = sweeps_total + whole_dense_readouts
    return {
        "per_lens": per_lens,
        "matmul_peak_flops_per_s": peak,
        "whole_dictionary": {
            "job": f"{n} features at each of layers {list(cfg['job_layers'])}, lenses {list(cfg['lenses'])}, {cfg['tokens']} tokens",
            "qlens_dense_seconds": whole_dense,
            "qlens_sweeps_seconds": sweeps_total,
            "qlens_readouts_seconds": whole_dense_readouts,
            "reference_seconds_extrapolated": whole_ref,
            "reference_cache_seconds": cache,
            "ratio": whole_ref / whole_dense,
            "note": (
                f"contestant's time EXTRAPOLATED from its per-feature times measured in this run at layers {layers} "
                f"({len(cfg['picks'])} features per layer and side), linearly interpolated over the job's layers {list(cfg['job_layers'])} "
                f"and multiplied by {n} features (plus its residual caches, built once per side: {cache or 'none'}); "
                f"qlens-jax = the measured sweeps (once) + readouts measured at layers "
                f"{layers} (interpolated over the other layers) + each lens's readout compilation (once)"
            ),
        },
    }


def print_report(summary, agreement, info, contestant: dict):
    print()
    print(f"contestant: {contestant['label']}")
    print(
        f"agreement: {agreement['features_checked']} top/bottom-{K} lists checked, {agreement['identical']} identical, "
        f"{agreement['tie_equivalent']} equal up to ties, {len(agreement['mismatches'])} mismatches"
    )
    print(
        f"machine: {info['cpu']} ({info['cores']} cores), device {info['device']['kind']}; "
        f"load {info['loadavg_at_start']} at start"
    )
    header = (
        f"{'lens':18} {'layer':>5} {'cont feat/s':>11} {'dense feat/s':>13} {'dense/cont':>10} {'readout feat/s':>15} "
        f"{'readout/peak':>13} {'per-feat feat/s':>16} {'pf/cont':>7}"
    )
    print(header)
    for lens, entry in summary["per_lens"].items():
        for r in entry["layers"]:
            print(
                f"{lens:18} {r['layer']:>5} {r['reference_features_per_s']:>11.3g} {r['dense_features_per_s']:>13.4g} "
                f"{r['dense_vs_reference']:>9.0f}x {r['dense_readout_only_features_per_s']:>15.4g} "
                f"{r['dense_readout_fraction_of_matmul_peak'] or float('nan'):>12.0%} "
                f"{r['per_feature_features_per_s']:>16.3g} {r['per_feature_vs_reference']:>6.1f}x"
            )
        print(
            f"{'':18} sweep (once, all layers, shared by the sides it names): {entry['sweep_seconds']:.1f} s; single-layer sweeps: "
            + ", ".join(f"layer {r['layer']} {r['dense_single_layer_sweep_seconds']:.1f} s" for r in entry["layers"])
        )
    w = summary["whole_dictionary"]
    if summary.get("matmul_peak_flops_per_s"):
        print(
            f"matmul peak measured in this run: {summary['matmul_peak_flops_per_s'] / 1e9:.1f} GFLOP/s (float32 4096^3)"
        )
    print()
    print(f"whole dictionary: {w['job']}")
    print(
        f"  qlens-jax dense: {common.fmt_seconds(w['qlens_dense_seconds'])} "
        f"(sweeps {common.fmt_seconds(w['qlens_sweeps_seconds'])} + readouts {common.fmt_seconds(w['qlens_readouts_seconds'])})"
    )
    print(
        f"  {contestant['name'] + ':':16} {common.fmt_seconds(w['reference_seconds_extrapolated'])} (EXTRAPOLATED"
        + (
            f"; residual caches {', '.join(f'{k} {v:.1f} s' for k, v in w['reference_cache_seconds'].items())}"
            if w["reference_cache_seconds"]
            else ""
        )
        + ")"
    )
    print(f"  ratio:           {w['ratio']:.0f}x")
    print(f"  note: {w['note']}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(sizes.THROUGHPUT), default="tiny")
    parser.add_argument("--features", type=int, help="features per dictionary (gpt2-small: 32768)")
    parser.add_argument("--layers", type=int, nargs="+", help="benchmarked layers (gpt2-small: 0 6 11)")
    parser.add_argument("--batch", type=int, help="sequences in the token sample (gpt2-small: 8)")
    parser.add_argument("--seq", type=int, help="tokens per sequence (gpt2-small: 256)")
    parser.add_argument(
        "--paper-sample",
        action="store_true",
        help=f"the paper's token sample, {sizes.PAPER_SAMPLE[0]} x {sizes.PAPER_SAMPLE[1]} (instead of --batch / --seq)",
    )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="what both sides store the model in and time (bfloat16: the paper's configs); a bfloat16 "
        "run also computes float32 lists on both sides, for the agreement check and the overlap",
    )
    parser.add_argument("--ref-features", type=int, help="features per layer and side timed with the reference")
    parser.add_argument(
        "--lenses",
        nargs="+",
        default=["query_lens_value", "query_lens_key"],
        choices=sorted(SIDES),
        help="lenses to benchmark",
    )
    parser.add_argument(
        "--memory-budget-gb",
        type=float,
        help="memory budget of the dense path (gpt2-small: 16, enough to share the MLP Jacobians "
        "between the two sweeps; tiny: 8)",
    )
    parser.add_argument(
        "--single-layer-seqs",
        type=int,
        default=1,
        help="sequences on which each single-layer (restricted) sweep is timed, then scaled to --batch",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/throughput-<size>-<device>.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--save-operators",
        metavar="DIR",
        help="save the dense path's operators here (reused by `benchmarks.million --operators DIR`)",
    )
    add_contestant_arguments(parser)
    parser.add_argument("--no-roofline", action="store_true", help="skip the FLOP accounting of the compiled steps")
    args = parser.parse_args(argv)

    size = sizes.THROUGHPUT[args.size]
    if args.paper_sample and (args.batch or args.seq):
        parser.error("--paper-sample: not with --batch / --seq")
    contestant = contestant_from_args(args, size)
    n_layers = builders.hf_config(size["hf"]).num_hidden_layers
    batch, seq = sizes.PAPER_SAMPLE if args.paper_sample else (args.batch or size["batch"], args.seq or size["seq"])
    cfg = dict(
        hf=size["hf"],
        seed=args.seed,
        features=args.features or size["features"],
        dtype=args.dtype,
        layers=tuple(args.layers or size["layers"]),
        job_layers=tuple(size["job_layers"] or range(n_layers)),
        batch=batch,
        seq=seq,
        lenses=tuple(args.lenses),
        budget=args.memory_budget_gb or size["budget"],
        quiet=args.quiet,
        save_operators=args.save_operators,
        single_layer_seqs=args.single_layer_seqs,
    )
    cfg["picks"] = builders.feature_picks(cfg["features"], args.ref_features or size["ref_features"])
    cfg["tokens"] = cfg["batch"] * cfg["seq"]
    info = machine.machine_info()
    common.log(
        f"throughput {args.size}: {cfg['features']} features at layers {cfg['layers']}, {cfg['tokens']} tokens, "
        f"contestant {contestant['label']}, its features {cfg['picks']}; load {machine.loadavg()}"
    )

    peak_start = common.run_isolated(machine.matmul_peak)
    common.log(f"matmul peak {peak_start['flops_per_s'] / 1e9:.1f} GFLOP/s")
    reference = run_contestant(cfg, contestant, args)
    common.log(f"contestant done ({contestant['name']}; peak RSS {reference['peak_rss_gb']} GiB)")
    per_feature = common.run_isolated(run_per_feature, cfg=cfg)
    common.log(f"per-feature done (peak RSS {per_feature['peak_rss_gb']} GiB)")
    dense = common.run_isolated(run_dense, cfg=cfg)
    common.log(f"dense done (peak RSS {dense['peak_rss_gb']} GiB)")
    peak_end = common.run_isolated(machine.matmul_peak)
    peak = max(peak_start["flops_per_s"], peak_end["flops_per_s"])

    model_config = builders.hf_config(cfg["hf"])
    agreement = check_agreement(cfg, reference, dense, per_feature)
    out = {
        "benchmark": "throughput",
        "size": args.size,
        "machine": info,
        "contestant": authors.recorded(contestant),
        "config": {k: v for k, v in cfg.items() if k != "hf"}
        | {"model": model_config.to_dict(), "save_operators": common.portable_path(cfg["save_operators"])},
        "agreement": agreement,
        "memory_gb": {
            name: {"setup": r.get("rss_setup_gb"), "peak": r["peak_rss_gb"]}
            for name, r in ((contestant["name"], reference), ("dense", dense), ("per_feature", per_feature))
        },
        "matmul_peak": {"start": peak_start, "end": peak_end},
        "raw": {"reference": reference, "dense": dense, "per_feature": per_feature},
        "loadavg_at_end": machine.loadavg(),
    }
    path = args.out or common.RESULTS / f"throughput-{args.size}-{machine.device_slug()}.json"
    if not agreement["passed"]:
        common.write_json(path, out)
        print(f"contestant: {contestant['label']}")
        print(
            f"AGREEMENT FAILED: {len(agreement['mismatches'])} lists differ from the contestant's; no speed reported."
        )
        for m in agreement["mismatches"][:10]:
            print(m)
        return 1
    out["summary"] = summarize(cfg, model_config, reference, dense, per_feature, peak)
    out["bfloat16_overlap"] = bfloat16_overlap(cfg, reference, dense, per_feature)
    if not args.no_roofline:
        out["roofline"] = common.run_isolated(roofline.account_throughput, cfg=cfg, dense=dense, peak=peak)
    common.write_json(path, out)
    print_report(out["summary"], agreement, info, contestant)
    if out["bfloat16_overlap"]:
        o = out["bfloat16_overlap"]
        print(
            f"bfloat16 against float32, top-{K} overlap (mean / min over {o['qlens']['lists']} lists): qlens-jax "
            f"{o['qlens']['mean']:.1%} / {o['qlens']['min']:.0%}, {contestant['name']} {o['contestant']['mean']:.1%} / "
            f"{o['contestant']['min']:.0%}"
        )
    if "roofline" in out:
        roofline.print_report(out["roofline"])
    print(f"peak memory (GiB, RSS of each process; setup = after model load): {out['memory_gb']}")
    print(f"load average at end: {out['loadavg_at_end']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
