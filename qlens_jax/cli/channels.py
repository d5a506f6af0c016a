"""`qlens channels`: the Subspace Channel analysis from the command line.

Model, dictionary and token-sample options are those of `qlens signatures`, parsed into the
same `qlens_jax.job.spec` values and loaded by the same helpers (`qlens_jax.job.inputs`), so
both commands read inputs the same way.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from qlens_jax.cli.options import (
    add_layers_argument,
    add_model_arguments,
    add_precision_argument,
    add_sample_arguments,
    check_precision,
    dictionary_sources,
    model_source,
    sample_spec,
)

EPILOG = """\
examples:
  qlens channels --model ./model --dictionary ./saes --corpus text.txt --out runs/channels
  qlens channels --model gpt2 --dictionary ./saes/L0 --dictionary ./saes/L6 --token-sample sample.npy \\
      --rank 64 --features-per-layer 1000 --train --out runs/channels-gpt2
"""


def configure(parser: argparse.ArgumentParser):
    """Declare `qlens channels`'s options; returns the runner."""
    parser.epilog = EPILOG
    io = parser.add_argument_group("inputs and output")
    add_model_arguments(
        io,
        "model: a local Hugging Face model folder or a Hub id",
        "an SAE or transcoder (folder, file, Hub id or sae_lens registry id RELEASE:SAE_ID); repeat for "
        "several; a folder holding one per layer adds all",
    )
    add_layers_argument(io, "only dictionaries at these layers, e.g. 0-5 (default: all)")
    io.add_argument("--out", required=True, metavar="DIR", help="output folder (created; must be new or empty)")
    add_sample_arguments(parser.add_argument_group("token sample (as in qlens signatures)"), seed=False)
    what = parser.add_argument_group("maps and tests")
    what.add_argument(
        "--rank", type=int, default=None, help="rank r of every map (default d_model // n_layers, the paper's choice)"
    )
    what.add_argument(
        "--features-per-layer", type=int, default=1000, help="value vectors sampled per source dictionary"
    )
    what.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the sample windows, feature sampling, split, training, control and permutations",
    )
    what.add_argument("--validation-fraction", type=float, default=0.1, help="share of each source's features held out")
    what.add_argument(
        "--train",
        action="store_true",
        help="also train the maps with Adam as the paper does (compare with the closed form)",
    )
    what.add_argument("--epochs", type=int, default=1000, help="full-batch epochs of --train")
    what.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate of --train")
    what.add_argument("--permutations", type=int, default=10_000, help="shuffles in each permutation test")
    what.add_argument("--no-control", dest="control", action="store_false", help="skip the shuffled-responses control")
    what.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG figures")
    add_precision_argument(parser)
    parser.add_argument(
        "--memory-budget-gb",
        type=float,
        help="device memory to plan the operator sweep for (default: from free memory)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return run_channels


def _check(args) -> None:
    from qlens_jax.errors import InputError
    from qlens_jax.job.inputs import check_sample

    check_sample(sample_spec(args))
    for option, value, low in (
        ("--rank", args.rank, 1),
        ("--features-per-layer", args.features_per_layer, 2),
        ("--epochs", args.epochs, 1),
        ("--permutations", args.permutations, 1),
    ):
        if value is not None and value < low:
            raise InputError(f"{option} {value}: must be at least {low}")
    if not 0 < args.validation_fraction < 1:
        raise InputError(f"--validation-fraction {args.validation_fraction}: must lie strictly between 0 and 1")
    if args.learning_rate <= 0:
        raise InputError(f"--learning-rate {args.learning_rate}: must be positive")
    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"--out {out}: exists and is not an empty folder; choose a new one")
    check_precision(args.precision)


def run_channels(args: argparse.Namespace, argv: list | None = None) -> int:
    """Run the analysis described by `args` (the options of `configure`); returns the exit code."""
    import numpy as np

    from qlens_jax.channels.analysis import ChannelConfig, channel_data, fit_channels
    from qlens_jax.channels.report import write_outputs
    from qlens_jax.channels.responses import check_sources
    from qlens_jax.corpus import save_token_sample
    from qlens_jax.errors import InputError
    from qlens_jax.job.inputs import draw_sample, load_dictionary_sources, load_model_source
    from qlens_jax.job.run import precision_kwargs
    from qlens_jax.lens import transport_operators

    _check(args)
    start = time.perf_counter()
    model, model_dir, tokenizer = load_model_source(model_source(args))
    dictionaries = load_dictionary_sources(dictionary_sources(args), model)
    check_sources(dictionaries)
    tokens, mask, sample = draw_sample(sample_spec(args), tokenizer, model, model_dir, args.quiet)
    precision = precision_kwargs(args.precision)
    config = ChannelConfig(
        rank=args.rank,
        n_features=args.features_per_layer,
        seed=args.seed,
        validation_fraction=args.validation_fraction,
        train=args.train,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        n_permutations=args.permutations,
        control=args.control,
    )
    operators = transport_operators(
        model,
        tokens,
        mask,
        sweeps=("first_order",),
        memory_budget_gb=args.memory_budget_gb,
        quiet=args.quiet,
        **precision,
    )
    data = channel_data(
        model,
        dictionaries,
        tokens,
        mask,
        n_features=config.n_features,
        seed=config.seed,
        operators=operators,
        **precision,
    )
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
    print(
        f"qlens channels: {len(data.pairs)} maps of rank {results.rank}; overlap same destination {test.within_mean:.3f}, "
        f"different {test.between_mean:.3f}, AUC {test.auc:.3f} (p {test.p_auc:.3g}); {time.perf_counter() - start:.0f} s -> {written['report']}",
        file=sys.stdout,
    )
    return 0
