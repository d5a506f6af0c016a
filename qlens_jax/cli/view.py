"""`qlens view`: a self-contained HTML viewer of a finished run."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser):
    """Declare `qlens view`'s options; returns the runner."""
    parser.add_argument("run_dir", metavar="DIR", help="output folder of a finished `qlens signatures` run")
    parser.add_argument("--out", metavar="FILE", help="HTML file to write (default: DIR/viewer.html)")
    parser.add_argument("--title", help="page title (default: the model's source)")
    parser.add_argument(
        "--layers",
        metavar="RANGES",
        help="only features of dictionaries at these layers, e.g. 3,5-7 (keeps large runs' pages small)",
    )
    return run


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from qlens_jax.job.inputs import parse_ranges
    from qlens_jax.viewer import write_viewer

    layers = parse_ranges(args.layers, "--layers").tolist() if args.layers else None
    path, n = write_viewer(args.run_dir, args.out, args.title, layers)
    print(f"qlens: viewer of {n} features -> {path}")
    return 0
