"""`qlens evaluate`: score lenses' signatures with I(T) and O(T) (and optionally a judge).

Inputs: the signatures of a finished `qlens signatures` run (its folder or signatures.parquet)
and/or baseline lenses computed here (`--baselines`), the model and dictionaries they were
computed for, and a corpus (its non-overlapping windows are the contexts of the input score;
the tuned lens trains on them). Outputs in `--out`: scores.csv, table.md, table.csv,
per_layer.csv, figure_<dictionary>.png, evaluation.json, and baselines.parquet /
tuned_lens/ when computed here.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from qlens_jax.cli.options import add_corpus_encoding_argument, add_precision_argument, check_precision, dictionary_sources, model_source
from qlens_jax.errors import InputError

EPILOG = """\
examples:
  qlens evaluate --model ./model --dictionary ./saes --signatures runs/gpt2 --corpus text.txt --out runs/gpt2/eval
  qlens evaluate --model ./model --dictionary ./saes --signatures runs/gpt2 --corpus text.txt \\
      --baselines all --train-tuned-lens --features-per-dictionary 100 --out runs/gpt2/eval

The input score compares token ids (--match ids) unless --match strings is given. The
judge is off unless --judge is given with --judge-endpoint (any OpenAI-compatible API).
"""
BASELINE_CHOICES = ("zero_out", "token_change_1", "token_change_5", "token_change_10", "tuned_lens", "tuned_lens_linear")


def configure(parser: argparse.ArgumentParser):
    """Declare `qlens evaluate`'s arguments on `parser`; returns the runner."""
    parser.epilog = EPILOG
    io = parser.add_argument_group("inputs and output")
    io.add_argument("--model", required=True, metavar="SRC", help="the model the signatures were computed for (folder or Hub id)")
    io.add_argument("--tokenizer", metavar="SRC", help="tokenizer folder or Hub id (default: the model's)")
    io.add_argument("--dictionary", required=True, action="append", metavar="SRC", help="a dictionary the signatures name; repeat for several")
    io.add_argument("--layers", metavar="RANGES", help="only dictionaries at these layers (default: all)")
    io.add_argument("--signatures", metavar="DIR|FILE", help="a finished `qlens signatures` run folder or its signatures.parquet")
    io.add_argument("--lenses", metavar="LENS[,LENS...]", help="only these lenses of --signatures (default: all in the file)")
    io.add_argument("--corpus", required=True, metavar="SRC", help="text/JSONL/datasets/.npy corpus: its windows are the input score's contexts")
    io.add_argument("--text-field", default="text", help="field holding the text in JSONL / datasets corpora")
    io.add_argument("--corpus-split", help="split of a datasets DatasetDict (default: train)")
    io.add_argument("--corpus-max-tokens", type=int, help="read only the first N corpus tokens")
    add_corpus_encoding_argument(io)
    io.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--features", metavar="RANGES", help="only these feature ids (default: those in the signatures)")
    what.add_argument("--features-per-dictionary", type=int, metavar="N", help="a seeded random sample of N features per dictionary")
    what.add_argument("--baselines", metavar="LENS[,LENS...]",
                      help="also compute these baselines here ('all' or a list of: " + ", ".join(BASELINE_CHOICES) + ")")
    what.add_argument("--token-sample", metavar="FILE.npy", help="sample for the secant baselines (default: the run's sample.npy, else --corpus windows)")
    what.add_argument("--num-samples", type=int, default=256, help="windows of --corpus in the baselines' sample when there is no sample.npy")
    what.add_argument("--max-length", type=int, default=32, help="tokens per window of that sample")
    what.add_argument("--tuned-lens", metavar="DIR", help="tuned-lens translators: a folder from --train-tuned-lens or the tuned-lens library")
    what.add_argument("--train-tuned-lens", action="store_true", help="train the translators on --corpus windows (saved in --out/tuned_lens)")
    what.add_argument("--tuned-lens-steps", type=int, default=250, help="training steps")
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--k", type=int, default=25, help="size of each lens's token set T")
    scoring.add_argument("--context-length", type=int, default=32, help="tokens per corpus context window")
    scoring.add_argument("--max-contexts", type=int, help="use at most this many context windows (default: all)")
    scoring.add_argument("--min-contexts", type=int, default=20, help="active contexts a feature needs for I(T)")
    scoring.add_argument("--kl-targets", default="0.25,0.5", help="mean next-token KL the steering strengths are calibrated to")
    scoring.add_argument("--top-promoted", type=int, default=25, help="|S|: tokens most promoted by steering")
    scoring.add_argument("--prefixes", metavar="FILE", help="neutral prefixes, one per line (default: the 100 built in)")
    scoring.add_argument("--prepend-bos", action="store_true", help="start every prefix with BOS")
    scoring.add_argument("--bos-id", type=int, help="BOS token id (default: from the tokenizer/model config)")
    scoring.add_argument("--generate-tokens", type=int, default=0, help="also average over this many steered sampled tokens (the reference: 20)")
    scoring.add_argument("--temperature", type=float, default=0.75, help="sampling temperature when generating")
    scoring.add_argument("--match", choices=("ids", "strings"), default="ids", help="compare token ids, or decoded strings with space markers normalized")
    scoring.add_argument("--seed", type=int, default=0, help="seed of feature sampling, baseline sample and generation")
    judge = parser.add_argument_group("LLM judge (optional, off by default)")
    judge.add_argument("--judge", action="store_true", help="also rate each signature with an LLM judge")
    judge.add_argument("--judge-endpoint", metavar="URL", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    judge.add_argument("--judge-model", default="gpt-4o-mini", help="model name sent to the endpoint")
    judge.add_argument("--judge-api-key-env", metavar="VAR", help="environment variable holding the API key, if the endpoint needs one")
    add_precision_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return lambda args, argv=None: run_evaluate(args)


# ---- the run --------------------------------------------------------------------------------
def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"{option} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise InputError(f"{option} {text!r}: expected at least one number")
    return values


def _baselines(text: str | None) -> tuple[str, ...]:
    if not text:
        return ()
    from qlens_jax.baselines import is_secant

    lenses = BASELINE_CHOICES if text.strip() == "all" else tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [lens for lens in lenses if not lens.startswith("tuned_lens") and not is_secant(lens)]
    bad += [lens for lens in lenses if lens.startswith("tuned_lens") and lens not in BASELINE_CHOICES]
    if bad or not lenses:
        raise InputError(f"--baselines {text!r}: unknown lens {bad[0] if bad else '(none)'!r}; choose from {', '.join(BASELINE_CHOICES)} or 'all'")
    return lenses


def _check(args) -> None:
    from qlens_jax.corpus import check_encoding

    for name in ("k", "context_length", "min_contexts", "top_promoted", "num_samples", "max_length", "tuned_lens_steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    for name in ("features_per_dictionary", "max_contexts", "corpus_max_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.generate_tokens < 0:
        raise InputError(f"--generate-tokens {args.generate_tokens}: must be >= 0")
    args.baselines = _baselines(args.baselines)
    if args.signatures is None and not args.baselines:
        raise InputError("nothing to evaluate: give --signatures DIR and/or --baselines LENSES")
    if any(lens.startswith("tuned_lens") for lens in args.baselines) and not (args.tuned_lens or args.train_tuned_lens):
        raise InputError("--baselines tuned_lens needs --tuned-lens DIR or --train-tuned-lens")
    if args.tuned_lens and args.train_tuned_lens:
        raise InputError("give either --tuned-lens or --train-tuned-lens, not both")
    for option, value in (("--corpus", args.corpus), ("--signatures", args.signatures), ("--token-sample", args.token_sample),
                          ("--tuned-lens", args.tuned_lens), ("--prefixes", args.prefixes)):
        if value is not None and not Path(value).expanduser().exists():
            raise InputError(f"{option} {value}: no such file or directory")
    if args.judge:
        _judge_config(args).check()
    elif args.judge_endpoint:
        raise InputError("--judge-endpoint is given but --judge is not; add --judge to ask the judge")
    check_encoding(args.corpus_encoding)
    check_precision(args.precision)


def _judge_config(args):
    from qlens_jax.evaluation.judge import JudgeConfig

    return JudgeConfig(endpoint=args.judge_endpoint, model=args.judge_model, api_key_env=args.judge_api_key_env)


def _corpus_windows(args, tokenizer, vocab_size: int, quiet: bool):
    """(context windows, their description, the tokenized corpus) of --corpus."""
    from qlens_jax.corpus import tokenize_corpus

    corpus = tokenize_corpus(Path(args.corpus).expanduser(), tokenizer, text_field=args.text_field, split=args.corpus_split,
                             max_tokens=args.corpus_max_tokens, vocab_size=vocab_size, quiet=quiet, encoding=args.corpus_encoding)
    if corpus.n_tokens and corpus.ids.max() >= vocab_size:
        raise InputError(f"--corpus {args.corpus}: token ids beyond the model's vocabulary ({vocab_size})")
    n = corpus.n_tokens // args.context_length
    if n == 0:
        raise InputError(f"--corpus {args.corpus}: {corpus.n_tokens} tokens, fewer than one --context-length window ({args.context_length})")
    windows = corpus.ids[: n * args.context_length].reshape(n, args.context_length)
    if args.max_contexts and n > args.max_contexts:
        windows = windows[np.sort(np.random.default_rng(args.seed).choice(n, args.max_contexts, replace=False))]
    description = {"corpus": str(Path(args.corpus).absolute()), "corpus_tokens": corpus.n_tokens,
                   "context_windows": int(windows.shape[0]), "context_length": args.context_length}
    return windows.astype(np.int32), description, corpus


def _select(sigs, dictionaries, args):
    """Filter the signatures' lenses and features; returns (signatures, features per dictionary)."""
    from qlens_jax.job.inputs import parse_ranges
    from qlens_jax.lens.signatures import Signatures, SignatureTable

    if args.lenses:
        wanted = [s.strip() for s in args.lenses.split(",") if s.strip()]
        missing = sorted(set(wanted) - {t.lens for t in sigs})
        if missing:
            raise InputError(f"--lenses {args.lenses}: not in --signatures {args.signatures} (have {sorted({t.lens for t in sigs})})")
        sigs = Signatures(t for t in sigs if t.lens in wanted)
    keys = [(d.name, d.layer) for d in dictionaries]
    sigs = Signatures(t for t in sigs if (t.dictionary, t.layer) in keys)  # --layers may have dropped some
    rng = np.random.default_rng(args.seed)
    only = parse_ranges(args.features, "--features") if args.features else None
    features = []
    for d in dictionaries:
        tables = [t for t in sigs if (t.dictionary, t.layer) == (d.name, d.layer)]
        ids = np.unique(np.concatenate([np.asarray(t.feature_ids) for t in tables])) if tables else (np.arange(d.d_sae) if only is None else only)
        if tables:
            common = set(ids.tolist())
            for t in tables:
                common &= set(np.asarray(t.feature_ids).tolist())
            ids = np.asarray(sorted(common), np.int64)
        if only is not None:
            ids = np.intersect1d(ids, only)
        if args.features_per_dictionary and len(ids) > args.features_per_dictionary:
            ids = np.sort(rng.choice(ids, args.features_per_dictionary, replace=False))
        if len(ids) and ids.max() >= d.d_sae:
            raise InputError(f"--features: feature {int(ids.max())} is out of range for {d.name!r} (layer {d.layer}, {d.d_sae} features)")
        features.append(ids)
    out = Signatures()
    for t in sigs:
        ids = features[keys.index((t.dictionary, t.layer))]
        rows = np.flatnonzero(np.isin(np.asarray(t.feature_ids), ids))
        take = lambda a: np.asarray(a)[rows]
        out.append(SignatureTable(t.lens, t.dictionary, t.layer, take(t.feature_ids), take(t.top_ids), take(t.top_scores),
                                  take(t.bottom_ids), take(t.bottom_scores)))
    return out, features


def _baseline_sample(args, windows_source, model, quiet):
    from qlens_jax.corpus import load_token_sample

    if args.token_sample:
        return load_token_sample(args.token_sample, model.config.vocab_size), {"token_sample": str(Path(args.token_sample).absolute())}
    if args.signatures and Path(args.signatures).is_dir() and (Path(args.signatures) / "sample.npy").is_file():
        path = Path(args.signatures) / "sample.npy"
        return load_token_sample(path, model.config.vocab_size), {"token_sample": str(path.absolute())}
    from qlens_jax.corpus import sample_windows

    tokens, mask = sample_windows(windows_source, args.num_samples, args.max_length, args.seed)
    return (tokens, mask), {"corpus_windows": args.num_samples, "max_length": args.max_length, "seed": args.seed}


def run_evaluate(args) -> int:
    """Run `qlens evaluate` with parsed `args`; returns the exit code."""
    from qlens_jax.baselines import (TunedLensTraining, all_points, baseline_signatures, library_points, load_tuned_lens,
                                     save_tuned_lens, train_tuned_lens)
    from qlens_jax.baselines.splice import write_point
    from qlens_jax.baselines.tuned_lens import final_row
    from qlens_jax.evaluation.prefixes import NEUTRAL_PREFIXES, prefix_batch
    from qlens_jax.evaluation.report import write_report
    from qlens_jax.evaluation.run import EvaluationOptions, evaluate
    from qlens_jax.evaluation.sources import load_signatures, save_signatures
    from qlens_jax.job.inputs import bos_token_id, load_dictionary_sources, load_model_source, vocab_strings
    from qlens_jax.job.run import precision_kwargs
    from qlens_jax.lens.signatures import Signatures

    started = time.time()
    quiet = args.quiet
    _check(args)
    options = EvaluationOptions(k=args.k, min_contexts=args.min_contexts, kl_targets=_floats(args.kl_targets, "--kl-targets"),
                                top_s=args.top_promoted, generate_tokens=args.generate_tokens, temperature=float(args.temperature),
                                match=args.match, seed=args.seed)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    model, model_dir, tokenizer = load_model_source(model_source(args))
    dictionaries = load_dictionary_sources(dictionary_sources(args), model)
    vocab = vocab_strings(tokenizer, model.config.vocab_size)
    sigs = load_signatures(args.signatures) if args.signatures else Signatures()
    sigs, features = _select(sigs, dictionaries, args)
    windows, description, corpus = _corpus_windows(args, tokenizer, model.config.vocab_size, quiet)
    record = {"command": sys.argv, "inputs": {"model": str(model_dir), "dictionaries": [f"{d.name}/{d.layer}" for d in dictionaries],
                                              "signatures": args.signatures, **description},
              "options": {k: v for k, v in vars(args).items() if not k.startswith("_") and isinstance(v, (str, int, float, bool, type(None), tuple, list))}}
    if args.baselines:
        (tokens, mask), sample = _baseline_sample(args, corpus, model, quiet)
        record["baseline_sample"] = sample
        translators = None
        if args.tuned_lens:
            translators = load_tuned_lens(args.tuned_lens, model)
        elif args.train_tuned_lens:
            points = sorted({write_point(d, model.config.n_layers, model.config.parallel_residual) for d in dictionaries} - {final_row(model.config.n_layers)})
            use = library_points(model.config.n_layers) if set(points) <= set(library_points(model.config.n_layers)) else all_points(model.config.n_layers)
            split = max(1, int(0.9 * len(windows)))
            translators, training = train_tuned_lens(model, windows[:split], points=use, options=TunedLensTraining(steps=args.tuned_lens_steps, seed=args.seed),
                                                     heldout=(windows[split:], None) if split < len(windows) else None, quiet=quiet)
            save_tuned_lens(translators, out / "tuned_lens", record={"options": training.options, "points": list(training.points),
                                                                      "heldout_kl_identity": training.heldout_kl_identity,
                                                                      "heldout_kl_trained": training.heldout_kl_trained,
                                                                      "final_train_loss": training.train_loss[-1]})
            record["tuned_lens"] = {"points": list(training.points), "heldout_kl_identity": training.heldout_kl_identity,
                                    "heldout_kl_trained": training.heldout_kl_trained}
        wanted = {i: ids for i, ids in enumerate(features) if len(ids)}
        baselines = baseline_signatures(model, dictionaries, tokens, mask, lenses=args.baselines, features=wanted, k=args.k,
                                        translators=translators, quiet=quiet, **precision_kwargs(args.precision))
        save_signatures(baselines, out / "baselines.parquet", dictionaries, vocab)
        sigs = Signatures([*sigs, *baselines])
    if not len(sigs):
        raise InputError("no signatures left to evaluate after --lenses / --layers / --features")
    if args.prefixes:
        prefixes = [line.strip() for line in Path(args.prefixes).read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        prefixes = list(NEUTRAL_PREFIXES)
    bos = bos_token_id(args.bos_id, tokenizer, Path(model_dir)) if args.prepend_bos else None
    if args.prepend_bos and bos is None:
        raise InputError("--prepend-bos: the tokenizer names no BOS token; give its id with --bos-id")
    prefix_tokens, prefix_mask = prefix_batch(tokenizer, prefixes, bos_id=bos)
    result = evaluate(model, dictionaries, sigs, windows, prefix_tokens=prefix_tokens, prefix_mask=prefix_mask, options=options,
                      vocab=vocab, judge=_judge_config(args) if args.judge else None, quiet=quiet)
    scores = ("input_score", "output_score", "judge_score") if args.judge else ("input_score", "output_score")
    preamble = (f"Evaluation of {len(sigs)} signature tables on {description['context_windows']} context windows of "
                f"{args.context_length} tokens; token sets compared by {args.match}.")
    paths = write_report(out, result.rows, result.per_layer, result.overall, scores, preamble=preamble)
    record["seconds"] = round(time.time() - started, 1)
    record["evaluation_options"] = result.options
    (out / "evaluation.json").write_text(json.dumps(record, indent=1, default=str))
    print(f"qlens evaluate: {len(result.rows)} (lens, feature) rows -> {paths['table_md']} ({record['seconds']} s)")
    return 0
