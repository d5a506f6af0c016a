"""Options several subcommands share, and their parsed values as `qlens_jax.job.spec` values.

`add_*` declare arguments on a parser or argument group; `model_source`, `dictionary_sources`,
`sample_spec` build the frozen job values from the parsed namespace; `check_precision` is the
one check of `--precision` that depends on the machine.
"""

from __future__ import annotations

import argparse
import dataclasses

from qlens_jax.job.spec import DictionarySources, ModelSource, SampleSpec
from qlens_jax.lens.linearization import SUBMODULES
from qlens_jax.lens.options import PRECISIONS, LensOptions

PRECISION_HELP = (
    "precision of the matrix products: float32 = true float32 on every backend (the reference); "
    "tf32 = TensorFloat-32 tensor cores (GPUs only); bfloat16 = bfloat16 inputs with float32 accumulation. "
    "Distinct from --dtype, which is what arrays are stored in"
)


def add_model_arguments(group, model_help: str, dictionary_help: str) -> None:
    """--model, --tokenizer, --dictionary (repeatable)."""
    group.add_argument("--model", required=True, metavar="SRC", help=model_help)
    group.add_argument("--tokenizer", metavar="SRC", help="tokenizer folder or Hub id (default: the model's)")
    group.add_argument("--dictionary", required=True, action="append", metavar="SRC", help=dictionary_help)


def add_layers_argument(group, help: str = "only dictionaries at these layers, e.g. 3,5-7 (default: all)") -> None:
    group.add_argument("--layers", metavar="RANGES", help=help)


def add_corpus_encoding_argument(group) -> None:
    group.add_argument(
        "--corpus-encoding",
        default="utf-8",
        metavar="CODEC",
        help="text encoding of text and JSONL corpora: any Python codec name, e.g. latin-1, cp1252",
    )


def add_sample_arguments(group, seed: bool = True) -> None:
    """The token-sample options of `qlens signatures` (`seed`: also declare --seed here)."""
    group.add_argument(
        "--corpus",
        metavar="SRC",
        help="text file, JSONL file (one document per line), folder saved by datasets' save_to_disk, or .npy of token ids",
    )
    group.add_argument(
        "--token-sample",
        metavar="FILE.npy",
        help="use this [num_samples, max_length] id array as the sample instead (-1 marks right padding)",
    )
    group.add_argument(
        "--num-samples",
        type=int,
        default=None,
        metavar="N",
        help="windows in the sample (default 1024, as in the paper)",
    )
    group.add_argument(
        "--max-length", type=int, default=None, metavar="N", help="tokens per window (default 32, as in the paper)"
    )
    if seed:
        group.add_argument("--seed", type=int, default=0, metavar="N", help="seed of the window sampling")
    group.add_argument(
        "--prepend-bos", action="store_true", help="start every window with BOS (the reference does not)"
    )
    group.add_argument(
        "--bos-id", type=int, metavar="ID", help="BOS token id (default: from tokenizer_config.json or config.json)"
    )
    group.add_argument(
        "--windows",
        choices=("concat", "document", "paper"),
        default="concat",
        help="concat: windows over the concatenated documents (the reference's convention); "
        "document: inside one document, short ones right-padded; "
        "paper: the authors' exact sample (TransformerLens rows with EOS between documents, "
        "last 1000 rows held out, torch's generator seeded --seed: use --seed 42 as the paper)",
    )
    group.add_argument(
        "--text-field", default="text", metavar="NAME", help="field holding the text in JSONL / datasets corpora"
    )
    group.add_argument("--corpus-split", metavar="NAME", help="split of a datasets DatasetDict (default: train)")
    group.add_argument(
        "--corpus-format",
        choices=("text", "jsonl", "datasets", "npy"),
        help="force the corpus format (default: detected)",
    )
    group.add_argument("--corpus-max-tokens", type=int, metavar="N", help="read only the first N tokens of the corpus")
    add_corpus_encoding_argument(group)


def add_precision_argument(group) -> None:
    group.add_argument("--precision", default="float32", choices=PRECISIONS, help=PRECISION_HELP)


def add_lens_option_arguments(group) -> None:
    """The `LensOptions` switches that change how the lenses compute (beyond --k, --stats,
    --dtype and --precision); `lens_options` reads them back."""
    group.add_argument(
        "--remove-final-norm-bias", action="store_true", help="value readouts without the final LayerNorm's bias"
    )
    group.add_argument(
        "--first-order-key-mask-seed",
        action="store_true",
        help="mask the first-order key seed at pads (the reference does not)",
    )
    group.add_argument(
        "--exact-norm-jacobian", action="store_true", help="transcoder keys include the MLP norm's Jacobian"
    )
    group.add_argument(
        "--submodule",
        choices=SUBMODULES,
        default="both",
        help="transport through attention only (attn), MLPs only (mlp) or both (the authors' submodule); "
        "refused for lenses without transport (Logit Lens)",
    )
    for side, what in (("jvp", "value (JVP)"), ("vjp", "key (VJP)")):
        group.add_argument(
            f"--no-{side}-norm",
            dest=f"{side}_norm",
            action="store_false",
            help=f"{what} transports without the blocks' norm Jacobians (the authors' use_{side}_layer_norm=false)",
        )
    group.add_argument(
        "--no-unembed-norm",
        dest="unembed_norm",
        action="store_false",
        help="value readouts without the final norm (the authors' use_unembed_layer_norm=false)",
    )


def lens_options(args: argparse.Namespace) -> LensOptions:
    """The parsed lens options (--k, --stats, --dtype, --precision and `add_lens_option_arguments`):
    every `LensOptions` field is the option of its name."""
    return LensOptions(**{field.name: getattr(args, field.name) for field in dataclasses.fields(LensOptions)})


def model_source(args: argparse.Namespace) -> ModelSource:
    return ModelSource(model=args.model, tokenizer=args.tokenizer)


def dictionary_sources(args: argparse.Namespace) -> DictionarySources:
    return DictionarySources(sources=tuple(args.dictionary), layers=args.layers)


def sample_spec(args: argparse.Namespace) -> SampleSpec:
    """The `add_sample_arguments` options (and --seed) as a `SampleSpec`."""
    return SampleSpec(
        corpus=args.corpus,
        token_sample=args.token_sample,
        num_samples=args.num_samples,
        max_length=args.max_length,
        seed=args.seed,
        prepend_bos=args.prepend_bos,
        bos_id=args.bos_id,
        windows=args.windows,
        text_field=args.text_field,
        corpus_split=args.corpus_split,
        corpus_format=args.corpus_format,
        corpus_max_tokens=args.corpus_max_tokens,
        corpus_encoding=args.corpus_encoding,
    )


def check_precision(precision: str) -> None:
    """`--precision` must be a mode this machine's backend honours (`qlens_jax.numerics`):
    tf32 needs a GPU, bfloat16 products a GPU or TPU. Checked before any input is loaded."""
    from qlens_jax.errors import InputError
    from qlens_jax.numerics import PrecisionError, check_precision as check_mode

    try:
        check_mode(precision)
    except PrecisionError as err:
        raise InputError(f"--precision {precision}: {err}") from None
