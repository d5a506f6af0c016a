"""`qlens compare`: how much the top-k lists of several runs agree (the paper's Table 9)."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser):
    """Declare `qlens compare`'s options; returns the runner."""
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="finished `qlens signatures` runs (folders or signatures.parquet files)"
    )
    parser.add_argument("--k", type=int, default=25, help="size of the top-k lists compared")
    parser.add_argument("--out", metavar="DIR", help="write compare.csv and compare.md here (default: print the table)")
    return run


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from qlens_jax.errors import InputError
    from qlens_jax.evaluation.compare import compare_runs, write_comparison

    if args.k < 1:
        raise InputError(f"--k {args.k}: must be at least 1")
    labels = [Path(r).name or r for r in args.runs]
    if len(set(labels)) != len(labels):
        labels = [f"run{i + 1}" for i in range(len(args.runs))]
    agreements = compare_runs(args.runs, k=args.k)
    if args.out:
        paths = write_comparison(Path(args.out).expanduser(), agreements, labels)
        print(f"qlens compare: {len(agreements)} rows -> {paths['md']}")
    else:
        for a in agreements:
            row = a.row(labels)
            print(
                f"{row['lens']}\t{row['dictionary']}/{row['layer']}\t{row['runs']}\tn={row['n_features']}\t"
                f"Jaccard {row['jaccard_mean']:.3f} ± {row['jaccard_ci95']:.3f}"
            )
    return 0
