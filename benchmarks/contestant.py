"""The contestant of the throughput benchmarks: who runs the per-feature definition beside
qlens-jax, and the check that its top-25 lists agree before any speed is compared.

- `--authors-repo DIR` (with `--authors-python`): the authors' own code (`benchmarks.authors`);
- otherwise `benchmarks/reference_torch.py` (one `torch.func` jvp / vjp pass per feature), run
  here by `run_reference`; the results say which one ran.

`check_agreement` compares the contestant's top / bottom-25 ids with qlens-jax's dense and
per-feature paths: identical, or (against the reference, which returns scores) equal up to ties,
positions whose scores differ by less than `TIE_RTOL` of the score scale.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks import authors, builders, common, machine, sizes

SIDES = {"query_lens_value": "value", "query_lens_key": "key", "logit_lens_value": "value", "logit_lens_key": "key"}
K = 25
TIE_RTOL = 1e-4


def contestant_dtypes(cfg: dict) -> tuple[str, ...]:
    """The dtypes each side runs, float32 first: a bfloat16 run also needs float32 lists (the
    agreement check is made on them, and the overlap is measured against them)."""
    return ("float32",) if cfg.get("dtype", "float32") == "float32" else ("float32", cfg["dtype"])


def run_reference(cfg: dict) -> dict:
    """`reference_torch.py` on the contestant's features, per dtype of `contestant_dtypes`: the
    timed dtype's rows in `results`, a bfloat16 run's float32 rows in `float32_results`."""
    import torch

    from benchmarks import reference_torch as ref

    hf, d, tokens, mask = builders.sample_setting(cfg)
    out = {"rss_setup_gb": round(machine.current_rss_gb(), 3), "torch_threads": torch.get_num_threads(), "results": {}}
    for dtype in contestant_dtypes(cfg):  # float32 first: the cast to bfloat16 is in place
        ref.prepare_model(hf, dtype)
        results = out["results"] if dtype == cfg.get("dtype", "float32") else out.setdefault("float32_results", {})
        for layer in cfg["layers"]:
            W_enc, W_dec = builders.dictionary_arrays(d, cfg["features"], layer, cfg["seed"])
            for lens in cfg["lenses"]:
                vectors = W_dec if SIDES[lens] == "value" else W_enc.T
                rows = []
                for f in cfg["picks"]:
                    start = time.perf_counter()
                    scores = ref.reference_scores(hf, tokens, mask, lens, vectors[f][None], "resid_post", layer)
                    seconds = time.perf_counter() - start
                    top, top_scores, bottom, bottom_scores = ref.topk_with_scores(scores, K + 1)
                    rows.append(
                        {
                            "feature": f,
                            "seconds": seconds,
                            "top_ids": top[0].tolist(),
                            "top_scores": top_scores[0].tolist(),
                            "bottom_ids": bottom[0].tolist(),
                            "bottom_scores": bottom_scores[0].tolist(),
                            "scale": float(np.abs(scores).max()),
                        }
                    )
                results[f"{lens}/{layer}"] = rows
    return out


def float32_rows(run: dict) -> dict:
    """A side's float32 rows: `float32_results` of a bfloat16 run, else its `results`."""
    return run.get("float32_results", run["results"])


def bfloat16_overlap(cfg: dict, reference: dict, dense: dict, per_feature: dict) -> dict | None:
    """For a bfloat16 run, per side the mean share of each timed feature's float32 top-25 that
    its bfloat16 top-25 keeps: qlens-jax (its bfloat16 dense readout against its float32
    per-feature lists) and the contestant (its bfloat16 run against its float32 run)."""
    if cfg.get("dtype", "float32") == "float32":
        return None

    def mean_overlap(pairs):
        shares = [len(set(a[:K]) & set(b[:K])) / K for a, b in pairs]
        return {"mean": float(np.mean(shares)), "min": float(np.min(shares)), "lists": len(shares)}

    qlens, contestant = [], []
    for key, rows in float32_rows(per_feature).items():
        qlens += zip(dense["readouts"][key]["top_ids"], rows["top_ids"])
    for key, rows in float32_rows(reference).items():
        contestant += [(low["top_ids"], high["top_ids"]) for low, high in zip(reference["results"][key], rows)]
    return {"qlens": mean_overlap(qlens), "contestant": mean_overlap(contestant)}


def _same_up_to_ties(ids, ref_ids, ref_scores, scale) -> tuple[bool, bool]:
    """(identical, equal up to ties) for top-k ids against the reference's top-(k+1). Without
    scores (the authors' code returns ids only) only identical lists pass."""
    ids, ref_ids = list(ids)[:K], list(ref_ids)
    if ids == ref_ids[:K]:
        return True, True
    if ref_scores is None:
        return False, False
    # ties: every differing position must sit where the reference's scores are within tolerance
    # of a neighbour's (order swaps) or of the (k+1)-th score (boundary swaps)
    tol = TIE_RTOL * max(scale, 1e-30)
    scores = np.asarray(ref_scores)
    for i, (a, b) in enumerate(zip(ids, ref_ids[:K])):
        if a == b:
            continue
        near = [j for j in range(len(ref_ids)) if abs(scores[j] - scores[i]) <= tol and j != i]
        if not any(ref_ids[j] == a for j in near):
            return False, False
    return False, True


def check_agreement(cfg, reference, dense, per_feature) -> dict:
    """Top / bottom-25 ids of every timed feature: the contestant's against qlens-jax's dense and
    per-feature paths, in float32 (a bfloat16 run's dense path is measured by its overlap instead)."""
    report = {"features_checked": 0, "identical": 0, "tie_equivalent": 0, "mismatches": []}
    bfloat16 = cfg.get("dtype", "float32") != "float32"
    for key, rows in float32_rows(reference).items():
        paths = ([] if bfloat16 else [("dense", dense["readouts"][key])]) + [
            ("per-feature", float32_rows(per_feature)[key])
        ]
        for idx, row in enumerate(rows):
            for name, other in paths:
                for which in ("top", "bottom"):
                    ids = other[f"{which}_ids"][idx]
                    identical, ok = _same_up_to_ties(
                        ids, row[f"{which}_ids"], row.get(f"{which}_scores"), row.get("scale", 0.0)
                    )
                    report["features_checked"] += 1
                    report["identical"] += identical
                    report["tie_equivalent"] += ok and not identical
                    if not ok:
                        report["mismatches"].append(
                            {
                                "lens/layer": key,
                                "feature": row["feature"],
                                "path": name,
                                "which": which,
                                "qlens": ids,
                                "contestant": row[f"{which}_ids"][:K],
                            }
                        )
    report["passed"] = not report["mismatches"]
    return report


def add_contestant_arguments(parser: argparse.ArgumentParser) -> None:
    """`--authors-repo` / `--authors-python` (shared with `benchmarks.million`)."""
    parser.add_argument(
        "--authors-repo",
        metavar="DIR",
        help="a checkout of the authors' code (HYU-NLP/query-lens): the contestant; without it "
        "benchmarks/reference_torch.py stands in (and the output says so)",
    )
    parser.add_argument(
        "--authors-python",
        metavar="PYTHON",
        default=sys.executable,
        help="interpreter of the authors' environment (`pip install -e '.[authors]'` in a venv of its own; "
        "default: this one)",
    )
    parser.add_argument(
        "--authors-workdir",
        metavar="DIR",
        help="where the inputs shared with the authors' process are written (default: a temporary folder)",
    )


def contestant_from_args(args, size: dict) -> dict:
    """The contestant's description, with the authors' checkout and interpreter checked before any work."""
    if not args.authors_repo:
        return dict(authors.REFERENCE)
    if not authors.loads(size["hf"]):
        raise SystemExit(
            f"--authors-repo: the authors' code cannot run on --size {args.size} "
            f"({authors.WHY_NOT.get(size['hf'].get('family', 'gpt2'), 'an unpublished shape')}); "
            f"sizes it runs on: {', '.join(n for n, s in sizes.THROUGHPUT.items() if authors.loads(s['hf']))}"
        )
    bad = [lens for lens in args.lenses if lens not in authors.SIDES]
    if bad:
        raise SystemExit(f"--authors-repo: the authors' run loop is timed for {sorted(authors.SIDES)} only, not {bad}")
    return authors.describe(authors.check_repo(args.authors_repo), authors.check_python(args.authors_python))


def run_contestant(cfg: dict, contestant: dict, args) -> dict:
    """The contestant's per-feature results (`run_reference`'s layout; the authors' rows have no scores)."""
    if contestant["name"] == "reference_torch":
        return common.run_isolated(run_reference, cfg=cfg)
    import tempfile

    with tempfile.TemporaryDirectory(prefix="qlens-authors-") as tmp:
        return authors.run_contestant(cfg, Path(contestant["repo"]), contestant["python"], args.authors_workdir or tmp)
