"""The `qlens` command line: `qlens signatures`, `export`, `view`, `demo`, `channels`, `evaluate`, `compare`.

Each subcommand lives in its own module with a function `configure(parser) -> runner`: it
declares the subcommand's arguments on `parser` and returns `runner(args, argv) -> exit code`.
Adding a subcommand is one `Subcommand` entry in `SUBCOMMANDS`, naming that function as
`"module:function"` (imported when the parser is built), e.g.

    Subcommand("serve", "qlens_jax.serve.cli:configure_serve", "serve a run's signatures over HTTP", "...")

Bad input (`InputError` and the library's input errors) is reported as one line,
`qlens <command>: error: <message naming the input>`, with exit code 2 and no traceback;
argparse's own usage errors also exit with 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from qlens_jax.serve.cli import SEARCH_DESCRIPTION, SEARCH_HELP, SERVE_DESCRIPTION, SERVE_HELP

Runner = Callable[[argparse.Namespace, list], int]


@dataclass(frozen=True)
class Subcommand:
    """`qlens <name>`: `target` is `"module:function"`, the `configure(parser) -> runner` function."""

    name: str
    target: str
    help: str
    description: str

    def configure(self, parser: argparse.ArgumentParser) -> Runner:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)(parser)


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand(
        "signatures",
        "qlens_jax.cli.signatures:configure",
        "compute Query Lens signatures of dictionary features (the main job)",
        "Compute the top-k / bottom-k token signatures of every requested feature under every\n"
        "requested lens, on a seeded token sample of a corpus, into a resumable output folder.",
    ),
    Subcommand(
        "export",
        "qlens_jax.cli.export:configure",
        "export a finished run in the reference implementation's format",
        "Write DIR/export/<lens>/feature_analysis.jsonl, one JSON object per feature with the fields of\n"
        "the reference implementation (feature_index, feature_str, feature_vector, stream_transition,\n"
        "readout, baseline, layer, top/bottom tokens and ids, stats, first-order per-layer lists).",
    ),
    Subcommand(
        "view",
        "qlens_jax.cli.view:configure",
        "write a self-contained HTML viewer of a finished run",
        "Write one self-contained HTML file with the signatures embedded (no server, no network): search by\n"
        "feature index, feature string or token; key and value signatures side by side, with\n"
        "Logit Lens and first order next to Query Lens when the run computed them. Open it with\n"
        "file://...; a search can be given in the URL, e.g. viewer.html#q=123 or #q=token:the.",
    ),
    Subcommand(
        "demo",
        "qlens_jax.cli.demo:configure",
        "run the main job on the bundled model and dictionaries (offline, about a minute)",
        "Compute Logit Lens and Query Lens signatures (both sides) of every feature of the bundled\n"
        "dictionaries (TopK SAEs on every layer of a small GPT-2 trained by the project, and a\n"
        "transcoder), on a seeded sample of the bundled held-out text; write the viewer; print a few\n"
        "example features. Needs no network.",
    ),
    Subcommand(
        "channels",
        "qlens_jax.cli.channels:configure",
        "fit low-rank maps between layers and test the Subspace Channel Hypothesis",
        "For sampled value vectors of each source dictionary, compute each later block's first-order\n"
        "response, fit a rank-r map per (source, destination) pair (closed form; --train adds the\n"
        "paper's Adam training), measure the overlap of the maps' column spaces and test whether maps\n"
        "that share a destination overlap more (permutation tests). Writes tables (Markdown, CSV),\n"
        "figures (PNG), summary.json and the maps (Orbax checkpoint) into --out.",
    ),
    Subcommand(
        "evaluate",
        "qlens_jax.cli.evaluate:configure",
        "score lenses' signatures with the paper's input and output scores (and baselines)",
        "Score the signatures of a finished run (and baseline lenses: zero-out, token change, tuned\n"
        "lens) with the input score I(T) and the output score O(T) of the paper; write Table-1-style\n"
        "tables (Markdown, CSV) and per-layer figures (PNG). An LLM judge is optional (off by default).",
    ),
    Subcommand(
        "compare",
        "qlens_jax.cli.compare:configure",
        "how much the top-k lists of several runs agree (Jaccard; the paper's Table 9)",
        "For every lens, dictionary and layer that all runs computed and every feature they share,\n"
        "the Jaccard index of the top-k token sets between each pair of runs and, with three or more\n"
        "runs, across all of them (mean, standard deviation and 95 % interval over the features).\n"
        "Runs of the same job on token samples drawn with different seeds measure how stable the\n"
        "signatures are.",
    ),
    Subcommand("serve", "qlens_jax.serve.cli:configure_serve", SERVE_HELP, SERVE_DESCRIPTION),
    Subcommand("search", "qlens_jax.serve.cli:configure_search", SEARCH_HELP, SEARCH_DESCRIPTION),
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions' line breaks; shows an option's default when it has a meaningful one
    (not None / False)."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = action.option_strings and action.nargs != 0 and action.default not in (None, argparse.SUPPRESS)
        if shown and "default" not in text:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The `qlens` parser with every subcommand of `SUBCOMMANDS`; `args._run` is its runner."""
    parser = argparse.ArgumentParser(
        prog="qlens",
        description="Query Lens signatures for every feature of sparse dictionaries (SAEs, transcoders), in JAX.",
        epilog="Run `qlens <command> --help` for a command's options. The main job is `qlens signatures`.",
    )
    commands = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for spec in SUBCOMMANDS:
        sub = commands.add_parser(
            spec.name, help=spec.help, description=spec.description, formatter_class=HelpFormatter
        )
        sub.set_defaults(_run=spec.configure(sub))
    return parser


def input_errors() -> tuple[type[BaseException], ...]:
    """The exception types that mean bad input (reported in one line, exit code 2)."""
    from converters.errors import ConversionError
    from qlens_jax.dictionaries import DictionaryError
    from qlens_jax.errors import InputError
    from qlens_jax.lens import LensRequestError

    return InputError, LensRequestError, DictionaryError, ConversionError


def main(argv: list[str] | None = None) -> int:
    """Run `qlens` with `argv` (default: the process arguments); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from qlens_jax.lens import SelfCheckError

    try:
        return args._run(args, argv)
    except input_errors() as err:
        print(f"qlens {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    except SelfCheckError as err:
        print(f"qlens {args.command}: {' '.join(str(err).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"qlens {args.command}: interrupted (finished work is kept; the same command continues it)", file=sys.stderr
        )
        return 130
