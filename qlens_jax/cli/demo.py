"""`qlens demo`: the main job on the embedded default model and dictionaries, offline.

Runs `qlens signatures` on the bundled GPT-2 (4 layers) with its TopK SAEs on every layer and
its transcoder, over a seeded sample of the bundled held-out text, with Logit Lens and Query
Lens on both sides; writes the viewer; prints a few example features.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from qlens_jax import default
from qlens_jax.cli.options import add_precision_argument

DEMO_LENSES = ("logit_lens_value", "logit_lens_key", "query_lens_value", "query_lens_key")
# Dictionaries whose clearest feature the summary shows (positions in DICTIONARY_NAMES).
SHOWN = (1, 3, 4)


def signatures_argv(out: Path, num_samples: int, max_length: int, quiet: bool, precision: str = "float32") -> list[str]:
    """The `qlens signatures` command line the demo runs."""
    argv = ["signatures", "--model", str(default.model_dir())]
    for name in default.DICTIONARY_NAMES:
        argv += ["--dictionary", str(default.dictionary_dir(name))]
    argv += [
        "--corpus",
        str(default.heldout_text_path()),
        "--num-samples",
        str(num_samples),
        "--max-length",
        str(max_length),
        "--lenses",
        ",".join(DEMO_LENSES),
        "--precision",
        precision,
        "--out",
        str(out),
    ]
    return argv + (["--quiet"] if quiet else [])


def _examples(out: Path) -> list[str]:
    """A few readable lines: for each dictionary in `SHOWN`, the feature whose Query Lens value
    signature stands out most (top score far above the rest of its top-k)."""
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "signatures.parquet").to_pylist()
    by_key = {(r["lens"], r["dictionary_index"], r["feature"]): r for r in rows}
    lines = []
    for index in SHOWN:
        candidates = [r for r in rows if r["lens"] == "query_lens_value" and r["dictionary_index"] == index]
        if not candidates:
            continue
        scores = np.asarray([r["top_scores"] for r in candidates])
        sharpness = (scores[:, 0] - scores.mean(1)) / (scores.std(1) + 1e-9)
        row = candidates[int(np.argmax(sharpness))]
        lines.append(row["feature_str"])
        for lens, label in (
            ("query_lens_value", "Query Lens value (promotes)"),
            ("logit_lens_value", "Logit Lens value           "),
            ("query_lens_key", "Query Lens key (activates) "),
            ("logit_lens_key", "Logit Lens key             "),
        ):
            match = by_key.get((lens, index, row["feature"]))
            if match:
                lines.append(f"  {label}: {_tokens(match['top_tokens'])}")
    return lines


def _tokens(tokens: list[str], n: int = 8) -> str:
    return " ".join(repr(t) for t in tokens[:n])


def run_demo(args: argparse.Namespace) -> int:
    """`qlens signatures` then `qlens view` on the bundled inputs; prints example features."""
    from qlens_jax.cli import main

    out = Path(args.out)
    code = main(signatures_argv(out, args.num_samples, args.max_length, args.quiet, args.precision))
    if code:
        return code
    code = main(["view", str(out)])
    if code:
        return code
    print()
    print("Examples (the full results: signatures.parquet; browse them: open viewer.html):")
    for line in _examples(out):
        print(line)
    return 0


def configure(parser: argparse.ArgumentParser):
    """Declare `qlens demo`'s options; returns the runner."""
    parser.add_argument("--out", default="qlens-demo", metavar="DIR", help="output folder")
    parser.add_argument(
        "--num-samples", type=int, default=128, metavar="N", help="windows of held-out text in the sample"
    )
    parser.add_argument("--max-length", type=int, default=32, metavar="N", help="tokens per window")
    add_precision_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return lambda args, argv: run_demo(args)
