"""The `qlens` command line: `qlens signatures`, `qlens export`, `qlens view`.

Subcommands live in a registry: adding one is one decorated function that declares the
subcommand's arguments and returns the function that runs it:

    @subcommand("demo", "one-line help", "longer description")
    def _demo(parser):
        parser.add_argument(...)
        return lambda args, argv: run_demo(args)   # returns the exit code

Bad input (`InputError` and the library's input errors) is reported as one line,
`qlens <command>: error: <message naming the input>`, with exit code 2 and no traceback;
argparse's own usage errors also exit with 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

Runner = Callable[[argparse.Namespace, list], int]


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    description: str
    configure: Callable[[argparse.ArgumentParser], Runner]


SUBCOMMANDS: dict[str, Subcommand] = {}


def subcommand(name: str, help: str, description: str | None = None):
    """Register `configure(parser) -> runner` as `qlens <name>`."""

    def register(configure: Callable[[argparse.ArgumentParser], Runner]):
        SUBCOMMANDS[name] = Subcommand(name, help, description or help, configure)
        return configure

    return register


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default when it has a meaningful one (not None / False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS)
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


# ---- qlens signatures -----------------------------------------------------------------------
SIGNATURES_EPILOG = """\
examples:
  qlens signatures --model openai-community/gpt2 --dictionary ./saes/resid-post-L6 \\
      --corpus pile.jsonl --out runs/gpt2
  qlens signatures --model ./model --dictionary ./saes --corpus text.txt --layers 3-5 \\
      --features 0-999 --lenses all --out runs/small

Outputs in --out: signatures.parquet (one row per lens, dictionary and feature), run.json
(inputs, content hashes, options, versions, timings), sample.npy, shards/ and operators/.
A killed run continues where it stopped when restarted with the same command.
"""


@subcommand(
    "signatures",
    "compute Query Lens signatures of dictionary features (the main job)",
    "Compute the top-k / bottom-k token signatures of every requested feature under every\n"
    "requested lens, on a seeded token sample of a corpus, into a resumable output folder.",
)
def _signatures(parser: argparse.ArgumentParser) -> Runner:
    parser.epilog = SIGNATURES_EPILOG
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--model", required=True, metavar="SRC", help="model: a local Hugging Face model folder (config.json + weights) or a Hub id")
    io.add_argument("--tokenizer", metavar="SRC", help="tokenizer folder or Hub id (default: the model's)")
    io.add_argument("--dictionary", required=True, action="append", metavar="SRC",
                    help="an SAE or transcoder (any format the converters read: folder, file or Hub id); repeat for several; "
                         "a folder holding one dictionary per layer adds all of them")
    io.add_argument("--out", required=True, metavar="DIR", help="output folder (created; an existing run there is continued)")
    sample = parser.add_argument_group("token sample")
    sample.add_argument("--corpus", metavar="SRC",
                        help="text file, JSONL file (one document per line), folder saved by datasets' save_to_disk, or .npy of token ids")
    sample.add_argument("--token-sample", metavar="FILE.npy",
                        help="use this [num_samples, max_length] id array as the sample instead (-1 marks right padding)")
    sample.add_argument("--num-samples", type=int, default=None, metavar="N", help="windows in the sample (default 1024, as in the paper)")
    sample.add_argument("--max-length", type=int, default=None, metavar="N", help="tokens per window (default 32, as in the paper)")
    sample.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the window sampling")
    sample.add_argument("--prepend-bos", action="store_true", help="start every window with BOS (the reference does not)")
    sample.add_argument("--bos-id", type=int, metavar="ID", help="BOS token id (default: from tokenizer_config.json or config.json)")
    sample.add_argument("--windows", choices=("concat", "document"), default="concat",
                        help="concat: windows over the concatenated documents (the reference); "
                             "document: inside one document, short ones right-padded")
    sample.add_argument("--text-field", default="text", metavar="NAME", help="field holding the text in JSONL / datasets corpora")
    sample.add_argument("--corpus-split", metavar="NAME", help="split of a datasets DatasetDict (default: train)")
    sample.add_argument("--corpus-format", choices=("text", "jsonl", "datasets", "npy"), help="force the corpus format (default: detected)")
    sample.add_argument("--corpus-max-tokens", type=int, metavar="N", help="read only the first N tokens of the corpus")
    what = parser.add_argument_group("what to compute")
    what.add_argument("--lenses", default="query_lens_value,query_lens_key", metavar="LENS[,LENS...]",
                      help="comma-separated lenses, or 'all': query_lens_value, query_lens_key, first_order_value, "
                           "first_order_key, logit_lens_value, logit_lens_key")
    what.add_argument("--layers", metavar="RANGES", help="only dictionaries at these layers, e.g. 3,5-7 (default: all)")
    what.add_argument("--features", metavar="SPEC",
                      help="features of every dictionary: ranges like 0-99,250, a .txt/.json/.npy file of ids, or the "
                           "reference implementation's feature-sample pickle (.pkl: layer and feature per record) (default: all)")
    what.add_argument("--k", type=int, default=25, metavar="N", help="tokens in each top-k and bottom-k list")
    what.add_argument("--stats", action="store_true", help="also compute each feature's relative variance (costs one pass per feature)")
    how = parser.add_argument_group("numerics and resources")
    how.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="compute dtype (float32 is the reference)")
    how.add_argument("--path", default="auto", choices=("auto", "dense", "per-feature"),
                     help="dense operators, one pass per feature, or auto (dense when a run has at least d_model features)")
    how.add_argument("--memory-budget-gb", type=float, metavar="GB", help="device memory to plan chunks for (default: from free memory)")
    how.add_argument("--shard-size", type=int, default=4096, metavar="N", help="features per output shard (the unit of resumption)")
    how.add_argument("--no-self-check", dest="self_check", action="store_false",
                     help="skip checking a few dense-path features against the per-feature path")
    how.add_argument("--remove-final-norm-bias", action="store_true", help="value readouts without the final LayerNorm's bias")
    how.add_argument("--first-order-key-mask-seed", action="store_true", help="mask the first-order key seed at pads (the reference does not)")
    how.add_argument("--exact-norm-jacobian", action="store_true", help="transcoder keys include the MLP norm's Jacobian")
    scale = parser.add_argument_group("several devices and hosts")
    scale.add_argument("--mesh", metavar="DATA,FEATURE",
                       help="device mesh: devices splitting the token sample (data) and the sweeps' basis vectors "
                            "(feature); readouts split features over all of them (default: every device on data)")
    scale.add_argument("--weights", choices=("auto", "sharded", "replicated"), default="auto",
                       help="on a mesh with a feature axis: split the vocabulary matrices and MLP units over it "
                            "(for models that do not fit one device), or keep a full copy per device; auto splits "
                            "when the weights take more than half of a device's free memory")
    scale.add_argument("--distributed", action="store_true",
                       help="join the other processes of a multi-host job (jax.distributed; Cloud TPU, SLURM, Open MPI "
                            "and Kubernetes are read from the environment): all compute, process 0 alone writes DIR")
    scale.add_argument("--coordinator", metavar="HOST:PORT", help="with --distributed: process 0's address (default: from the environment)")
    scale.add_argument("--num-processes", type=int, metavar="N", help="with --distributed: number of processes (default: from the environment)")
    scale.add_argument("--process-id", type=int, metavar="I", help="with --distributed: this process's index, 0..N-1 (default: from the environment)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (the one-line summary stays)")

    def run(args, argv):
        from qlens_jax.job.run import run_signatures

        return run_signatures(args, argv)

    return run


# ---- qlens export ---------------------------------------------------------------------------
@subcommand(
    "export",
    "export a finished run in the reference implementation's format",
    "Write DIR/export/<lens>/feature_analysis.jsonl, one JSON object per feature with the fields of\n"
    "the reference implementation (feature_index, feature_str, feature_vector, stream_transition,\n"
    "readout, baseline, layer, top/bottom tokens and ids, stats, first-order per-layer lists).",
)
def _export(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("run_dir", metavar="DIR", help="output folder of a finished `qlens signatures` run")
    parser.add_argument("--format", default="jsonl", choices=("jsonl",), help="export format")
    parser.add_argument("--out", metavar="DIR", help="where to write (default: DIR/export)")
    parser.add_argument("--lenses", metavar="LENS[,LENS...]", help="only these lenses (default: all in the run)")

    def run(args, argv):
        from qlens_jax.io.export import export_jsonl

        written = export_jsonl(args.run_dir, args.out, args.lenses)
        for path, rows in written:
            print(f"qlens: {rows} features -> {path}")
        return 0

    return run


# ---- qlens view -----------------------------------------------------------------------------
@subcommand(
    "view",
    "write a self-contained HTML viewer of a finished run",
    "Write one self-contained HTML file with the signatures embedded (no server, no network): search by\n"
    "feature index, feature string or token; key and value signatures side by side, with\n"
    "Logit Lens and first order next to Query Lens when the run computed them. Open it with\n"
    "file://...; a search can be given in the URL, e.g. viewer.html#q=123 or #q=token:the.",
)
def _view(parser: argparse.ArgumentParser) -> Runner:
    parser.add_argument("run_dir", metavar="DIR", help="output folder of a finished `qlens signatures` run")
    parser.add_argument("--out", metavar="FILE", help="HTML file to write (default: DIR/viewer.html)")
    parser.add_argument("--title", help="page title (default: the model's source)")
    parser.add_argument("--layers", metavar="RANGES",
                        help="only features of dictionaries at these layers, e.g. 3,5-7 (keeps large runs' pages small)")

    def run(args, argv):
        from qlens_jax.job.inputs import parse_ranges
        from qlens_jax.viewer import write_viewer

        layers = parse_ranges(args.layers, "--layers").tolist() if args.layers else None
        path, n = write_viewer(args.run_dir, args.out, args.title, layers)
        print(f"qlens: viewer of {n} features -> {path}")
        return 0

    return run


# ---- more subcommands -----------------------------------------------------------------------
# `qlens demo` goes here, as one more `@subcommand(...)` function. A command defined in another
# module registers here too, e.g.:
#     from qlens_jax.channels.cli import DESCRIPTION, HELP, configure
#     subcommand("channels", HELP, DESCRIPTION)(configure)


# ---- qlens demo (qlens_jax/demo.py) ---------------------------------------------------------
from qlens_jax import demo as _demo  # noqa: E402

subcommand("demo", _demo.HELP, _demo.DESCRIPTION)(_demo.configure)


# ---- qlens channels (options and runner in qlens_jax/channels/cli.py) -----------------------
from qlens_jax.channels import cli as _channels  # noqa: E402

subcommand("channels", _channels.HELP, _channels.DESCRIPTION)(_channels.configure)


# ---- qlens evaluate (options and runner in qlens_jax/evaluation/cli.py) ---------------------
from qlens_jax.evaluation import cli as _evaluate  # noqa: E402

subcommand(
    "evaluate",
    "score lenses' signatures with the paper's input and output scores (and baselines)",
    "Score the signatures of a finished run (and baseline lenses: zero-out, token change, tuned\n"
    "lens) with the input score I(T) and the output score O(T) of the paper; write Table-1-style\n"
    "tables (Markdown, CSV) and per-layer figures (PNG). An LLM judge is optional (off by default).",
)(_evaluate.configure_evaluate)


# ---- entry point ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qlens",
        description="Query Lens signatures for every feature of sparse dictionaries (SAEs, transcoders), in JAX.",
        epilog="Run `qlens <command> --help` for a command's options. The main job is `qlens signatures`.",
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for spec in SUBCOMMANDS.values():
        sub = commands.add_parser(spec.name, help=spec.help, description=spec.description, formatter_class=_Formatter)
        sub.set_defaults(_run=spec.configure(sub))
    return parser


def _input_errors() -> tuple[type[BaseException], ...]:
    from converters.errors import ConversionError
    from qlens_jax.dictionaries import DictionaryError
    from qlens_jax.errors import InputError
    from qlens_jax.lens import LensRequestError

    return InputError, LensRequestError, DictionaryError, ConversionError


def main(argv: list[str] | None = None) -> int:
    """Run `qlens` with `argv` (default: the process arguments); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    import qlens_jax  # noqa: F401  (XLA flags before JAX starts)
    from qlens_jax.lens import SelfCheckError

    try:
        return args._run(args, argv)
    except _input_errors() as err:
        print(f"qlens {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except SelfCheckError as err:
        print(f"qlens {args.command}: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"qlens {args.command}: interrupted (finished work is kept; the same command continues it)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
