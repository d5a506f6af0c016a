"""`qlens export`: a finished run in the reference implementation's format."""

from __future__ import annotations

import argparse


def configure(parser: argparse.ArgumentParser):
    """Declare `qlens export`'s options; returns the runner."""
    parser.add_argument("run_dir", metavar="DIR", help="output folder of a finished `qlens signatures` run")
    parser.add_argument("--format", default="jsonl", choices=("jsonl",), help="export format")
    parser.add_argument("--out", metavar="DIR", help="where to write (default: DIR/export)")
    parser.add_argument("--lenses", metavar="LENS[,LENS...]", help="only these lenses (default: all in the run)")
    return run


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from qlens_jax.io.export import export_jsonl

    written = export_jsonl(args.run_dir, args.out, args.lenses)
    for path, rows in written:
        print(f"qlens: {rows} features -> {path}")
    return 0
