"""The paper's job: 100 sampled features per layer, at every layer of a setting, both sides.

What a researcher reproducing the paper's Table 1 runs: `query_lens` on a few features of
each dictionary, with `path="auto"` (qlens-jax picks the per-feature or the dense path by cost,
`qlens_jax.lens.auto`), against the authors' code (`--authors-repo DIR`, `benchmarks/authors.py`)
or, without it, `benchmarks/reference_torch.py`. Same weights (a random `transformers` model of
`--size`, seeded), same token sample, same synthetic SAE of the setting's width on `resid_post`
at each layer, same features (`--features-per-layer`, spread over the dictionary), float32.

Each side runs in its own process. qlens-jax runs one `query_lens` call per layer and lens,
twice: the first call (compilation included; one compiled program serves every layer) and the
second (compiled) are both recorded. The contestant's time per layer is the sum of its
per-feature times; its residual caches, built once per side, are reported apart and added to
its job total, as compilation is to ours. Every top-25 and bottom-25 list must be identical to
the contestant's (against `reference_torch.py`, equal up to ties) before any ratio is printed.

    python -m benchmarks.paper_job --size tiny
    python -m benchmarks.paper_job --size gpt2-small --batch 4 --seq 32 --authors-repo query-lens

Results: `benchmarks/results/paper-job-<size>-<device>.json`.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from benchmarks import authors, builders, common, machine, sizes
from benchmarks.contestant import K, _same_up_to_ties, add_contestant_arguments, contestant_from_args, run_contestant

LENSES = ("query_lens_value", "query_lens_key")


def run_ours(cfg: dict) -> dict:
    """qlens-jax on the paper's job: per layer and lens, the path "auto" chose, both calls'
    seconds and the lists of every feature."""
    from qlens_jax import ExecutionOptions, LensOptions, plan_request, query_lens

    hf, d, tokens, mask = builders.sample_setting(cfg)
    model = builders.jax_model(hf)
    del hf
    out = {"rss_setup_gb": round(machine.current_rss_gb(), 3), "results": {}}
    picks = np.asarray(cfg["picks"])
    options, execution = LensOptions(k=K), ExecutionOptions(memory_budget_gb=float(cfg["budget"]), quiet=True)
    for layer in cfg["layers"]:
        dictionary = builders.synthetic_dictionary(d, cfg["features"], layer, cfg["seed"])
        for lens in cfg["lenses"]:

            def call(fn, lens=lens, dictionary=dictionary):
                return fn(
                    model,
                    dictionary,
                    tokens,
                    mask,
                    lenses=(lens,),
                    features=picks,
                    options=options,
                    execution=execution,
                )

            path = call(plan_request).path
            _, first = machine.timed(call, query_lens)
            sigs, second = machine.timed(call, query_lens)
            out["results"][f"{lens}/{layer}"] = {
                "path": path,
                "first_call_seconds": first,
                "seconds": second,
                "top_ids": sigs[0].top_ids.tolist(),
                "bottom_ids": sigs[0].bottom_ids.tolist(),
                "loadavg": machine.loadavg(),
            }
            common.log(f"qlens-jax: {lens} layer {layer} ({path}): first call {first:.2f} s, then {second:.2f} s")
    return out


def check_lists(contestant_rows: dict, ours: dict) -> dict:
    """Every feature's top / bottom-25 ids: ours against the contestant's (identical, or against
    the reference's scores equal up to ties)."""
    report = {"lists_checked": 0, "identical": 0, "tie_equivalent": 0, "mismatches": []}
    for key, rows in contestant_rows.items():
        for index, row in enumerate(rows):
            for which in ("top", "bottom"):
                ids = ours[key][f"{which}_ids"][index]
                identical, ok = _same_up_to_ties(
                    ids, row[f"{which}_ids"], row.get(f"{which}_scores"), row.get("scale", 0.0)
                )
                report["lists_checked"] += 1
                report["identical"] += identical
                report["tie_equivalent"] += ok and not identical
                if not ok:
                    report["mismatches"].append({"lens/layer": key, "feature": row["feature"], "which": which})
    report["passed"] = not report["mismatches"]
    return report


def summarize(cfg: dict, contestant: dict, ours: dict) -> dict:
    """Per layer and side: our seconds (first call, compiled), the contestant's, their ratios;
    and the whole job's totals with each side's one-time costs (compilation, caches)."""
    layers = []
    for layer in cfg["layers"]:
        entry = {"layer": layer}
        for lens in cfg["lenses"]:
            key = f"{lens}/{layer}"
            theirs = float(sum(row["seconds"] for row in contestant["results"][key]))
            mine = ours["results"][key]
            entry[lens] = {
                "path": mine["path"],
                "qlens_first_call_s": mine["first_call_seconds"],
                "qlens_s": mine["seconds"],
                "contestant_s": theirs,
                "ratio": theirs / mine["seconds"],
                "ratio_first_call": theirs / mine["first_call_seconds"],
            }
        layers.append(entry)
    caches = float(sum(contestant.get("cache_seconds", {}).values()))
    per_feature_total = sum(e[lens]["contestant_s"] for e in layers for lens in cfg["lenses"])
    first_total = sum(e[lens]["qlens_first_call_s"] for e in layers for lens in cfg["lenses"])
    return {
        "layers": layers,
        "job": {
            "qlens_s": first_total,
            "contestant_s": per_feature_total + caches,
            "contestant_caches_s": caches,
            "ratio": (per_feature_total + caches) / first_total,
        },
    }


def print_report(summary: dict, cfg: dict, contestant: dict, agreement: dict) -> None:
    print(
        f"paper's job: {len(cfg['picks'])} features per layer of {cfg['features']}, layers {list(cfg['layers'])}, "
        f"{cfg['tokens']} tokens ({cfg['batch']} x {cfg['seq']}), float32; contestant: {contestant['label']}"
    )
    print(
        f"agreement: {agreement['identical']} of {agreement['lists_checked']} top/bottom-{K} lists identical, "
        f"{agreement['tie_equivalent']} equal up to ties"
    )
    header = "layer"
    for lens in cfg["lenses"]:
        header += f" | {lens}: path, qlens first / compiled s, contestant s, ratio (compiled / first)"
    print(header)
    for entry in summary["layers"]:
        line = f"{entry['layer']:>5}"
        for lens in cfg["lenses"]:
            e = entry[lens]
            line += (
                f" | {e['path']}, {e['qlens_first_call_s']:.2f} / {e['qlens_s']:.2f}, {e['contestant_s']:.2f}, "
                f"{e['ratio']:.1f}x / {e['ratio_first_call']:.1f}x"
            )
        print(line)
    job = summary["job"]
    print(
        f"whole job: qlens-jax {job['qlens_s']:.1f} s (first calls, compilation included), contestant "
        f"{job['contestant_s']:.1f} s (caches {job['contestant_caches_s']:.1f} s included): {job['ratio']:.1f}x"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(sizes.THROUGHPUT), default="tiny")
    parser.add_argument("--features-per-layer", type=int, default=100, help="sampled features per layer (paper: 100)")
    parser.add_argument("--layers", type=int, nargs="+", help="layers (default: the setting's job layers)")
    parser.add_argument("--batch", type=int, help="sequences in the token sample (default: the size's)")
    parser.add_argument("--seq", type=int, help="tokens per sequence (default: the size's)")
    parser.add_argument("--lenses", nargs="+", default=list(LENSES), choices=LENSES)
    parser.add_argument("--memory-budget-gb", type=float, help="qlens-jax's memory budget (default: the size's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/paper-job-<size>-<device>.json)")
    add_contestant_arguments(parser)
    args = parser.parse_args(argv)

    size = sizes.THROUGHPUT[args.size]
    contestant = contestant_from_args(args, size)
    n_layers = builders.hf_config(size["hf"]).num_hidden_layers
    cfg = dict(
        hf=size["hf"],
        seed=args.seed,
        features=size["features"],
        dtype="float32",
        layers=tuple(args.layers or size["job_layers"] or range(n_layers)),
        batch=args.batch or size["batch"],
        seq=args.seq or size["seq"],
        lenses=tuple(args.lenses),
        budget=args.memory_budget_gb or size["budget"],
    )
    bad = [layer for layer in cfg["layers"] if not 0 <= layer < n_layers]
    if bad:
        parser.error(f"--layers: {bad} not in 0 .. {n_layers - 1}")
    cfg["picks"] = builders.feature_picks(cfg["features"], args.features_per_layer)
    cfg["tokens"] = cfg["batch"] * cfg["seq"]
    info = machine.machine_info()
    common.log(
        f"paper's job {args.size}: {len(cfg['picks'])} features per layer at layers {cfg['layers']}, "
        f"{cfg['tokens']} tokens, contestant {contestant['label']}; load {machine.loadavg()}"
    )
    theirs = run_contestant(cfg, contestant, args)
    common.log(f"contestant done (peak RSS {theirs['peak_rss_gb']} GiB)")
    ours = common.run_isolated(run_ours, cfg=cfg)
    common.log(f"qlens-jax done (peak RSS {ours['peak_rss_gb']} GiB)")
    agreement = check_lists(theirs["results"], ours["results"])
    out = {
        "benchmark": "paper_job",
        "size": args.size,
        "machine": info,
        "contestant": authors.recorded(contestant),
        "config": {k: v for k, v in cfg.items() if k != "hf"} | {"model": builders.hf_config(cfg["hf"]).to_dict()},
        "agreement": agreement,
        "memory_gb": {
            name: {"setup": r.get("rss_setup_gb"), "peak": r["peak_rss_gb"]}
            for name, r in ((contestant["name"], theirs), ("qlens", ours))
        },
        "raw": {"contestant": theirs, "qlens": ours},
        "loadavg_at_end": machine.loadavg(),
    }
    path = args.out or common.RESULTS / f"paper-job-{args.size}-{machine.device_slug()}.json"
    if not agreement["passed"]:
        common.write_json(path, out)
        print(
            f"AGREEMENT FAILED: {len(agreement['mismatches'])} lists differ from the contestant's; no ratio reported."
        )
        for mismatch in agreement["mismatches"][:10]:
            print(mismatch)
        return 1
    out["summary"] = summarize(cfg, theirs, ours)
    common.write_json(path, out)
    print_report(out["summary"], cfg, contestant, agreement)
    print(f"peak memory (GiB): {out['memory_gb']}; load average at end: {out['loadavg_at_end']}; wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
