"""`qlens channels`: the Subspace Channel analysis from the command line.

Wiring: `configure(parser)` declares the options and returns the runner `(args, argv) -> exit
code`, the shape `qlens_jax.cli`'s registry takes:

    subcommand("channels", HELP, DESCRIPTION)(configure)

`add_channels_command(subparsers)` does the same on a plain argparse subparsers object.
Model, dictionary and token-sample options are those of `qlens signatures` and are loaded by
the same helpers (`qlens_jax.job.inputs`), so both commands read inputs the same way.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

HELP = "fit low-rank maps between layers and test the Subspace Channel Hypothesis"
DESCRIPTION = (
    "For sampled value vectors of each source dictionary, compute each later block's first-order\n"
    "response, fit a rank-r map per (source, destination) pair (closed form; --train adds the\n"
    "paper's Adam training), measure the overlap of the maps' column spaces and test whether maps\n"
    "that share a destination overlap more (permutation tests). Writes tables (Markdown, CSV),\n"
    "figures (PNG), summary.json and the maps (Orbax checkpoint) into --out."
)
EPILOG = """\
examples:
  qlens channels --model ./model --dictionary ./saes --corpus text.txt --out runs/channels
  qlens channels --model gpt2 --dictionary ./saes/L0 --dictionary ./saes/L6 --token-sample sample.npy \\
      --rank 64 --features-per-layer 1000 --train --out runs/channels-gpt2
"""


def configure(parser: argparse.ArgumentParser):
    parser.epilog = EPILOG
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--model", required=True, metavar="SRC", help="model: a local Hugging Face model folder or a Hub id")
    io.add_argument("--tokenizer", metavar="SRC", help="tokenizer folder or Hub id (default: the model's)")
    io.add_argument("--dictionary", required=True, action="append", metavar="SRC",
                    help="an SAE or transcoder (folder, file or Hub id); repeat for several; a folder holding one per layer adds all")
    io.add_argument("--layers", metavar="RANGES", help="only dictionaries at these layers, e.g. 0-5 (default: all)")
    io.add_argument("--out", required=True, metavar="DIR", help="output folder (created; must be new or empty)")
    sample = parser.add_argument_group("token sample (as in qlens signatures)")
    sample.add_argument("--corpus", metavar="SRC", help="text file, JSONL file, datasets folder, or .npy of token ids")
    sample.add_argument("--token-sample", metavar="FILE.npy", help="a [num_samples, max_length] id array (-1 marks right padding)")
    sample.add_argument("--num-samples", type=int, default=None, help="windows in the sample (default 1024)")
    sample.add_argument("--max-length", type=int, default=None, help="tokens per window (default 32)")
    sample.add_argument("--prepend-bos", action="store_true", help="start every window with BOS")
    sample.add_argument("--bos-id", type=int, help="BOS token id (default: from the tokenizer or model config)")
    sample.add_argument("--windows", choices=("concat", "document"), default="concat", help="window sampling (see qlens signatures)")
    sample.add_argument("--text-field", default="text", help="field holding the text in JSONL / datasets corpora")
    sample.add_argument("--corpus-split", help="split of a datasets DatasetDict (default: train)")
    sample.add_argument("--corpus-format", choices=("text", "jsonl", "datasets", "npy"), help="force the corpus format")
    sample.add_argument("--corpus-max-tokens", type=int, help="read only the first N tokens of the corpus")
    what = parser.add_argument_group("maps and tests")
    what.add_argument("--rank", type=int, default=None, help="rank r of every map (default d_model // n_layers, the paper's choice)")
    what.add_argument("--features-per-layer", type=int, default=1000, help="value vectors sampled per source dictionary")
    what.add_argument("--seed", type=int, default=0, help="seed of the sample windows, feature sampling, split, training, control and permutations")
    what.add_argument("--validation-fraction", type=float, default=0.1, help="share of each source's features held out")
    what.add_argument("--train", action="store_true", help="also train the maps with Adam as the paper does (compare with the closed form)")
    what.add_argument("--epochs", type=int, default=1000, help="full-batch epochs of --train")
    what.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate of --train")
    what.add_argument("--permutations", type=int, default=10_000, help="shuffles in each permutation test")
    what.add_argument("--no-control", dest="control", action="store_false", help="skip the shuffled-responses control")
    what.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG figures")
    parser.add_argument("--memory-budget-gb", type=float, help="device memory to plan the operator sweep for (default: from free memory)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return lambda args, argv: run_channels(args, argv)


def add_channels_command(subparsers) -> argparse.ArgumentParser:
    """Add `channels` to an argparse subparsers object; the runner is the `_run` default."""
    parser = subparsers.add_parser("channels", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(_run=configure(parser))
    return parser


def _check(args) -> None:
    from qlens_jax.errors import InputError

    if (args.corpus is None) == (args.token_sample is None):
        raise InputError("give exactly one of --corpus and --token-sample")
    for option, value in (("--corpus", args.corpus), ("--token-sample", args.token_sample)):
        if value is not None and not Path(value).expanduser().exists():
            raise InputError(f"{option} {value}: no such file or directory")
    for option, value, low in (("--rank", args.rank, 1), ("--features-per-layer", args.features_per_layer, 2), ("--epochs", args.epochs, 1),
                               ("--permutations", args.permutations, 1), ("--num-samples", args.num_samples, 1), ("--max-length", args.max_length, 1)):
        if value is not None and value < low:
            raise InputError(f"{option} {value}: must be at least {low}")
    if not 0 < args.validation_fraction < 1:
        raise InputError(f"--validation-fraction {args.validation_fraction}: must lie strictly between 0 and 1")
    if args.learning_rate <= 0:
        raise InputError(f"--learning-rate {args.learning_rate}: must be positive")
    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out}: exists and is not an empty folder; choose a new one")


def run_channels(args: argparse.Namespace, argv: list | None = None) -> int:
    """Run the analysis described by `args` (the options of `configure`); returns the exit code."""
    import numpy as np

    from qlens_jax.channels.analysis import ChannelConfig, channel_data, fit_channels
    from qlens_jax.channels.report import write_outputs
    from qlens_jax.corpus import save_token_sample
    from qlens_jax.errors import InputError
    from qlens_jax.job.inputs import load_dictionary_sources, load_model_source, draw_sample
    from qlens_jax.lens import transport_operators

    _check(args)
    start = time.perf_counter()
    model, model_dir, tokenizer = load_model_source(args)
    dictionaries = load_dictionary_sources(args, model)
    tokens, mask, sample = draw_sample(args, tokenizer, model, model_dir, args.quiet)
    config = ChannelConfig(
        rank=args.rank, n_features=args.features_per_layer, seed=args.seed, validation_fraction=args.validation_fraction,
        train=args.train, epochs=args.epochs, learning_rate=args.learning_rate, n_permutations=args.permutations, control=args.control,
    )
    operators = transport_operators(model, tokens, mask, sweeps=("first_order",), memory_budget_gb=args.memory_budget_gb, quiet=args.quiet)
    data = channel_data(model, dictionaries, tokens, mask, n_features=config.n_features, seed=config.seed, operators=operators)
    if not data.pairs:
        raise InputError("--dictionary: no dictionary has a whole block after the point it writes (nothing to map)")
    results = fit_channels(data, config, quiet=args.quiet)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    save_token_sample(out / "sample.npy", np.asarray(tokens), np.asarray(mask))
    command = "qlens " + shlex.join(argv) if argv else "qlens channels ..."
    described = ", ".join(f"{k} {v}" for k, v in sample.items() if v is not None)
    header = f"Command: `{command}`\n\nModel: `{args.model}`; token sample: {described}"
    written = write_outputs(results, out, plots=args.plots, header=header)
    test = results.fits["closed_form"].destination
    print(f"qlens channels: {len(data.pairs)} maps of rank {results.rank}; overlap same destination {test.within_mean:.3f}, "
          f"different {test.between_mean:.3f}, AUC {test.auc:.3f} (p {test.p_auc:.3g}); {time.perf_counter() - start:.0f} s -> {written['report']}",
          file=sys.stdout)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (`python -m qlens_jax.channels.cli ...`), until `qlens` registers the command."""
    parser = argparse.ArgumentParser(prog="qlens channels", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    runner = configure(parser)
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    import qlens_jax  # noqa: F401  (XLA flags before JAX starts)
    from qlens_jax.cli import _input_errors

    try:
        return runner(args, ["channels", *argv])
    except _input_errors() as err:
        print(f"qlens channels: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
