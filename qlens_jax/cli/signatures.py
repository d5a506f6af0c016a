"""`qlens signatures`: options, parsed into a `SignaturesJob` and run by `qlens_jax.job.run`."""

from __future__ import annotations

import argparse

from qlens_jax.cli.options import (
    add_layers_argument,
    add_lens_option_arguments,
    add_model_arguments,
    add_precision_argument,
    add_sample_arguments,
    check_precision,
    dictionary_sources,
    lens_options,
    model_source,
    sample_spec,
)
from qlens_jax.job.spec import JobOptions, SignaturesJob
from qlens_jax.lens.options import ExecutionOptions

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


def configure(parser: argparse.ArgumentParser):
    """Declare `qlens signatures`'s options; returns the runner."""
    parser.epilog = SIGNATURES_EPILOG
    io = parser.add_argument_group("inputs and output")
    add_model_arguments(
        io,
        "model: a local Hugging Face model folder (config.json + weights) or a Hub id",
        "an SAE or transcoder (any format the converters read: folder, file or Hub id, or a sae_lens "
        "registry id RELEASE:SAE_ID); repeat for several; a folder holding one dictionary per layer adds all of them",
    )
    io.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (created; an existing run there is continued)"
    )
    add_sample_arguments(parser.add_argument_group("token sample"))
    what = parser.add_argument_group("what to compute")
    what.add_argument(
        "--lenses",
        default="query_lens_value,query_lens_key",
        metavar="LENS[,LENS...]",
        help="comma-separated lenses, or 'all': query_lens_value, query_lens_key, first_order_value, "
        "first_order_key, logit_lens_value, logit_lens_key, or specs VECTOR:TRANSITION:READOUT "
        "(value|key : identity|first_order|full : unembed|embed|embed_cosine_centered, as the authors' run.py "
        "accepts them, e.g. value:identity:embed)",
    )
    add_layers_argument(what)
    what.add_argument(
        "--features",
        metavar="SPEC",
        help="features of every dictionary: ranges like 0-99,250, a .txt/.json/.npy file of ids, or the "
        "reference implementation's feature-sample pickle (.pkl: layer and feature per record) (default: all)",
    )
    what.add_argument("--k", type=int, default=25, metavar="N", help="tokens in each top-k and bottom-k list")
    what.add_argument(
        "--stats",
        action="store_true",
        help="also compute each feature's relative variance (costs one pass per feature)",
    )
    how = parser.add_argument_group("numerics and resources")
    how.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="dtype the model, operators and activations are stored in (float32 is the reference)",
    )
    add_precision_argument(how)
    how.add_argument(
        "--path",
        default="auto",
        choices=("auto", "dense", "per-feature"),
        help="dense operators, one pass per feature, or auto (dense when a run has at least d_model features)",
    )
    how.add_argument(
        "--memory-budget-gb",
        type=float,
        metavar="GB",
        help="device memory to plan chunks for (default: from free memory)",
    )
    how.add_argument(
        "--shard-size", type=int, default=4096, metavar="N", help="features per output shard (the unit of resumption)"
    )
    how.add_argument(
        "--no-self-check",
        dest="self_check",
        action="store_false",
        help="skip checking a few dense-path features against the per-feature path",
    )
    add_lens_option_arguments(how)
    scale = parser.add_argument_group("several devices and hosts")
    scale.add_argument(
        "--mesh",
        metavar="DATA,FEATURE",
        help="device mesh: devices splitting the token sample (data) and the sweeps' basis vectors "
        "(feature); readouts split features over all of them (default: every device on data)",
    )
    scale.add_argument(
        "--weights",
        choices=("auto", "sharded", "replicated"),
        default="auto",
        help="on a mesh with a feature axis: split the vocabulary matrices and MLP units over it "
        "(for models that do not fit one device), or keep a full copy per device; auto splits "
        "when the weights take more than half of a device's free memory",
    )
    scale.add_argument(
        "--distributed",
        action="store_true",
        help="join the other processes of a multi-host job (jax.distributed; Cloud TPU, SLURM, Open MPI "
        "and Kubernetes are read from the environment): all compute, process 0 alone writes DIR",
    )
    scale.add_argument(
        "--coordinator",
        metavar="HOST:PORT",
        help="with --distributed: process 0's address (default: from the environment)",
    )
    scale.add_argument(
        "--num-processes",
        type=int,
        metavar="N",
        help="with --distributed: number of processes (default: from the environment)",
    )
    scale.add_argument(
        "--process-id",
        type=int,
        metavar="I",
        help="with --distributed: this process's index, 0..N-1 (default: from the environment)",
    )
    parser.add_argument(
        "--protocol",
        choices=("default", "paper"),
        default="default",
        help="paper: the paper's sample and numerics (--windows paper --seed 42 --num-samples 1024 "
        "--max-length 32 --dtype bfloat16 --k 25); an option given with another value is refused",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars (the one-line summary stays)")

    return lambda args, argv: run(args, argv, parser)


def signatures_job(args: argparse.Namespace) -> SignaturesJob:
    """The parsed options as a job (`InputError` on an unknown lens)."""
    from qlens_jax.job.inputs import parse_lenses

    options = JobOptions(
        out=args.out,
        lenses=parse_lenses(args.lenses),
        features=args.features,
        lens=lens_options(args),
        execution=ExecutionOptions(
            path=args.path, memory_budget_gb=args.memory_budget_gb, self_check=args.self_check, quiet=args.quiet
        ),
        shard_size=args.shard_size,
        mesh=args.mesh,
        weights=args.weights,
        distributed=args.distributed,
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
    )
    return SignaturesJob(
        model=model_source(args), dictionaries=dictionary_sources(args), sample=sample_spec(args), options=options
    )


def run(args: argparse.Namespace, argv: list[str], parser: argparse.ArgumentParser | None = None) -> int:
    from qlens_jax.job.run import run_signatures
    from qlens_jax.protocol import PAPER_SIGNATURES, apply_protocol

    if args.protocol == "paper":
        apply_protocol(args, parser, argv, PAPER_SIGNATURES)
    job = signatures_job(args)
    if not job.options.distributed:  # a multi-process job must not start JAX's backend before joining the others
        check_precision(job.options.lens.precision)
    return run_signatures(job, argv)
