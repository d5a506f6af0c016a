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
import random
import sys
import time
from pathlib import Path

import numpy as np

from qlens_jax.cli.options import (
    add_corpus_encoding_argument,
    add_precision_argument,
    check_precision,
    dictionary_sources,
    model_source,
)
from qlens_jax.errors import InputError

EPILOG = """\
examples:
  qlens evaluate --model ./model --dictionary ./saes --signatures runs/gpt2 --corpus text.txt --out runs/gpt2/eval
  qlens evaluate --model ./model --dictionary ./saes --signatures runs/gpt2 --corpus text.txt \\
      --baselines all --train-tuned-lens --features-per-dictionary 100 --out runs/gpt2/eval

The input score compares token ids (--match ids) unless --match strings is given. The
judge is off unless --judge is given with --judge-endpoint (any OpenAI-compatible API).
"""
BASELINE_CHOICES = (
    "zero_out",
    "token_change_1",
    "token_change_5",
    "token_change_10",
    "tuned_lens",
    "tuned_lens_linear",
)


def configure(parser: argparse.ArgumentParser):
    """Declare `qlens evaluate`'s arguments on `parser`; returns the runner."""
    parser.epilog = EPILOG
    io = parser.add_argument_group("inputs and output")
    io.add_argument(
        "--model", required=True, metavar="SRC", help="the model the signatures were computed for (folder or Hub id)"
    )
    io.add_argument("--tokenizer", metavar="SRC", help="tokenizer folder or Hub id (default: the model's)")
    io.add_argument(
        "--dictionary",
        required=True,
        action="append",
        metavar="SRC",
        help="a dictionary the signatures name; repeat for several",
    )
    io.add_argument("--layers", metavar="RANGES", help="only dictionaries at these layers (default: all)")
    io.add_argument(
        "--signatures", metavar="DIR|FILE", help="a finished `qlens signatures` run folder or its signatures.parquet"
    )
    io.add_argument(
        "--lenses", metavar="LENS[,LENS...]", help="only these lenses of --signatures (default: all in the file)"
    )
    io.add_argument(
        "--corpus",
        required=True,
        metavar="SRC",
        help="text/JSONL/datasets/.npy corpus: its windows are the input score's contexts",
    )
    io.add_argument("--text-field", default="text", help="field holding the text in JSONL / datasets corpora")
    io.add_argument("--corpus-split", help="split of a datasets DatasetDict (default: train)")
    io.add_argument("--corpus-max-tokens", type=int, help="read only the first N corpus tokens")
    add_corpus_encoding_argument(io)
    io.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    what = parser.add_argument_group("what to evaluate")
    what.add_argument("--features", metavar="RANGES", help="only these feature ids (default: those in the signatures)")
    what.add_argument(
        "--features-per-dictionary", type=int, metavar="N", help="a seeded random sample of N features per dictionary"
    )
    what.add_argument(
        "--feature-sampling",
        choices=("random", "paper"),
        default="random",
        help="random: N features drawn with numpy; paper: the authors' sampler (10 N candidates in Python's "
        "random.Random(--seed).sample order, the first N with --min-contexts active contexts kept)",
    )
    what.add_argument(
        "--baselines",
        metavar="LENS[,LENS...]",
        help="also compute these baselines here ('all' or a list of: " + ", ".join(BASELINE_CHOICES) + ")",
    )
    what.add_argument(
        "--token-sample",
        metavar="FILE.npy",
        help="sample for the secant baselines (default: the run's sample.npy, else --corpus windows)",
    )
    what.add_argument(
        "--num-samples",
        type=int,
        default=256,
        help="windows of --corpus in the baselines' sample when there is no sample.npy",
    )
    what.add_argument("--max-length", type=int, default=32, help="tokens per window of that sample")
    what.add_argument(
        "--tuned-lens",
        metavar="DIR",
        help="tuned-lens translators: a folder from --train-tuned-lens or the tuned-lens library",
    )
    what.add_argument(
        "--train-tuned-lens",
        action="store_true",
        help="train the translators on --corpus windows (saved in --out/tuned_lens)",
    )
    what.add_argument("--tuned-lens-steps", type=int, default=250, help="training steps")
    what.add_argument(
        "--tuned-lens-point",
        choices=("written", "layer"),
        default="written",
        help="written: the translator of the residual point the dictionary writes; layer: the library's "
        "translator of the dictionary's layer, the identity at the last layer (the authors' code)",
    )
    scoring = parser.add_argument_group("scoring")
    scoring.add_argument("--k", type=int, default=25, help="size of each lens's token set T")
    scoring.add_argument(
        "--context-length", type=int, default=32, help="tokens per corpus context window (the paper: 128)"
    )
    scoring.add_argument(
        "--contexts",
        choices=("windows", "paper"),
        default="windows",
        help="windows: non-overlapping windows of the concatenated corpus; paper: the authors' activation "
        "corpus (TransformerLens rows with EOS between documents, --max-contexts of them, 4096 by "
        "default, drawn with replacement by torch's generator seeded --seed)",
    )
    scoring.add_argument("--max-contexts", type=int, help="use at most this many context windows (default: all)")
    scoring.add_argument("--min-contexts", type=int, default=20, help="active contexts a feature needs for I(T)")
    scoring.add_argument(
        "--activations",
        metavar="FILE.pkl",
        help="the authors' feature sample (a pickle of util.Feature records, read without running code "
        "from it): only its features are evaluated, and I(T) uses its activations as contexts, as "
        "their input_score.py does (the token at each activation's maximum, compared as strings)",
    )
    scoring.add_argument(
        "--require-contexts",
        action="store_true",
        help="leave out features with fewer than --min-contexts active contexts (no row), as the authors' "
        "feature sampler does; by default they are kept with I(T) = NaN",
    )
    scoring.add_argument(
        "--kl-targets",
        default="0.25,0.5",
        help="mean KL the steering strengths are calibrated to; a negative target steers the other way "
        "(reported; S uses the positive targets)",
    )
    scoring.add_argument(
        "--kl-positions",
        choices=("last", "all"),
        default="last",
        help="KL of the next token after each prefix (last), or averaged over every prefix position "
        "(all: the authors' definition)",
    )
    scoring.add_argument(
        "--alpha-search",
        choices=("bisection", "integer"),
        default="bisection",
        help="bisection: real alpha within 2%% of the target; integer: the authors' integer search in "
        "[1, 1000], stopping within [target, target + 0.1]",
    )
    scoring.add_argument(
        "--no-error-term",
        action="store_true",
        help="clean runs and the calibration use the dictionary's reconstruction at its site, the error "
        "term dropped (the authors' code, sae_lens's default); steering itself keeps it",
    )
    scoring.add_argument(
        "--top-promoted", type=int, default=None, help="|S|: tokens most promoted by steering (default: --k, |S| = |T|)"
    )
    scoring.add_argument(
        "--prefixes",
        metavar="FILE",
        help="neutral prefixes: one per line, or a JSON list such as the authors' data/generation_prompts.json "
        "(the paper's list; default: the 100 built in)",
    )
    scoring.add_argument("--prepend-bos", action="store_true", help="start every prefix with BOS")
    scoring.add_argument("--bos-id", type=int, help="BOS token id (default: from the tokenizer/model config)")
    scoring.add_argument(
        "--generate-tokens",
        type=int,
        default=0,
        help="also average over this many steered sampled tokens (the reference: 20)",
    )
    scoring.add_argument(
        "--temperature", type=float, default=0.75, help="sampling temperature when generating (0: greedy)"
    )
    scoring.add_argument(
        "--showcase-prefixes",
        type=int,
        default=3,
        help="prefixes continued under steering at each KL target, for figure4.html and qlens serve (0: none)",
    )
    scoring.add_argument(
        "--showcase-tokens", type=int, default=20, help="tokens generated after each of them (default 20)"
    )
    scoring.add_argument(
        "--figure4-features",
        type=int,
        default=8,
        help="features shown in figure4.html / figure4.png, the paper's Fig. 4 (0: no figure)",
    )
    scoring.add_argument(
        "--figure4-key-lens",
        help="key-side lens of Fig. 4 (default: query_lens_key, else first_order_key, else logit_lens_key)",
    )
    scoring.add_argument(
        "--figure4-value-lens",
        help="value-side lens of Fig. 4 (default: query_lens_value, else first_order_value, else logit_lens_value)",
    )
    scoring.add_argument(
        "--output-resamples",
        type=int,
        default=200,
        help="bootstrap draws of the prefixes for the 95%% interval of each O(T) when generation samples "
        "(scores.csv's output_score_lo95 / output_score_hi95; 0: none)",
    )
    scoring.add_argument(
        "--match",
        choices=("ids", "strings", "stripped"),
        default="ids",
        help="compare token ids; decoded strings with space markers normalized as the authors' normalize_token "
        "(strings, the paper's I(T)); or the same with surrounding whitespace stripped (stripped)",
    )
    scoring.add_argument("--seed", type=int, default=0, help="seed of feature sampling, baseline sample and generation")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=("float32", "bfloat16"),
        help="what the model's weights are stored in while scoring (the paper's runs: bfloat16); norms, "
        "softmaxes and KLs stay float32",
    )
    parser.add_argument(
        "--protocol",
        choices=("default", "paper"),
        default="default",
        help="paper: the paper's evaluation protocol, every convention of the authors' code (the contexts, "
        "feature filter and sampler, string matching, 20 steered tokens at T = 0.75, their KL and "
        "alpha search, BOS, no error term, the tuned-lens index, the judge, bfloat16, seed 42: docs/evaluation.md); "
        "an option given with another value is refused",
    )
    judge = parser.add_argument_group("LLM judge (optional, off by default)")
    judge.add_argument("--judge", action="store_true", help="also rate each signature with an LLM judge")
    judge.add_argument(
        "--judge-endpoint", metavar="URL", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1"
    )
    judge.add_argument(
        "--judge-model",
        default=None,
        help="model name sent to the endpoint (default gpt-4o-mini; gpt-5-nano with --judge-preset paper)",
    )
    judge.add_argument(
        "--judge-api-key-env", metavar="VAR", help="environment variable holding the API key, if the endpoint needs one"
    )
    judge.add_argument(
        "--judge-preset",
        choices=("default", "paper"),
        default="default",
        help="default: a 1-5 rubric with the top tokens and a few activating contexts; paper: the paper's "
        "0-10 topical-concentration rubric on tokens only, gpt-5-nano, no temperature or max_tokens sent",
    )
    judge.add_argument(
        "--judge-system-prompt",
        metavar="FILE",
        help="replace the rubric's system prompt with this file's text "
        "(e.g. the authors' prompt, to reproduce their runs)",
    )
    judge.add_argument(
        "--judge-temperature",
        default=None,
        metavar="T|none",
        help="temperature sent (default 0; 'none' sends none, as models that refuse it need)",
    )
    judge.add_argument(
        "--judge-max-tokens", default=None, metavar="N|none", help="max_tokens sent (default 100; 'none' sends none)"
    )
    judge.add_argument(
        "--judge-cost",
        action="store_true",
        help="print what the judge would be sent (requests, estimated tokens and, with --judge-price, the "
        "cost) once the signatures are selected, and stop before any request and any scoring",
    )
    judge.add_argument(
        "--judge-price",
        default=None,
        metavar="IN,OUT",
        help="USD per million input and output tokens, for --judge-cost",
    )
    add_precision_argument(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return lambda args, argv=None: run_evaluate(args, argv or [], parser)


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
        raise InputError(
            f"--baselines {text!r}: unknown lens {bad[0] if bad else '(none)'!r}; choose from {', '.join(BASELINE_CHOICES)} or 'all'"
        )
    return lenses


def _check(args) -> None:
    from qlens_jax.corpus import check_encoding

    for name in ("figure4_features", "showcase_prefixes", "showcase_tokens", "output_resamples"):
        if getattr(args, name) < 0:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 0")

    for name in (
        "k",
        "context_length",
        "min_contexts",
        "top_promoted",
        "num_samples",
        "max_length",
        "tuned_lens_steps",
    ):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    for name in ("features_per_dictionary", "max_contexts", "corpus_max_tokens"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise InputError(f"--{name.replace('_', '-')} {getattr(args, name)}: must be at least 1")
    if args.feature_sampling == "paper" and not args.features_per_dictionary:
        raise InputError("--feature-sampling paper draws --features-per-dictionary N features; give N")
    if args.generate_tokens < 0:
        raise InputError(f"--generate-tokens {args.generate_tokens}: must be >= 0")
    args.baselines = _baselines(args.baselines)
    if args.signatures is None and not args.baselines:
        raise InputError("nothing to evaluate: give --signatures DIR and/or --baselines LENSES")
    if any(lens.startswith("tuned_lens") for lens in args.baselines) and not (args.tuned_lens or args.train_tuned_lens):
        raise InputError("--baselines tuned_lens needs --tuned-lens DIR or --train-tuned-lens")
    if args.tuned_lens and args.train_tuned_lens:
        raise InputError("give either --tuned-lens or --train-tuned-lens, not both")
    for option, value in (
        ("--corpus", args.corpus),
        ("--signatures", args.signatures),
        ("--token-sample", args.token_sample),
        ("--tuned-lens", args.tuned_lens),
        ("--prefixes", args.prefixes),
        ("--activations", args.activations),
    ):
        if value is not None and not Path(value).expanduser().exists():
            raise InputError(f"{option} {value}: no such file or directory")
    if args.judge:
        _judge_config(args).check()
    elif args.judge_cost:
        _judge_config(args)  # the options are checked; no endpoint is needed for an estimate
    elif args.judge_endpoint:
        raise InputError("--judge-endpoint is given but --judge is not; add --judge to ask the judge")
    check_encoding(args.corpus_encoding)
    check_precision(args.precision)


def _optional_number(text: str | None, option: str, kind, default):
    """`--judge-temperature` / `--judge-max-tokens`: a number, 'none' (not sent) or absent (`default`)."""
    if text is None:
        return default
    if text.strip().lower() == "none":
        return None
    try:
        value = kind(text)
    except ValueError:
        raise InputError(f"{option} {text!r}: expected a number or 'none'") from None
    if value < 0:
        raise InputError(f"{option} {text!r}: must not be negative")
    return value


def _judge_config(args):
    import dataclasses

    from qlens_jax.evaluation.judge import JudgeConfig, paper_judge

    system = None
    if args.judge_system_prompt:
        try:
            system = Path(args.judge_system_prompt).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"--judge-system-prompt {args.judge_system_prompt}: cannot be read ({err})") from None
    if args.judge_preset == "paper":
        config = paper_judge(args.judge_endpoint, args.judge_api_key_env, system)
    else:
        config = JudgeConfig(endpoint=args.judge_endpoint, api_key_env=args.judge_api_key_env, system_prompt=system)
    return dataclasses.replace(
        config,
        model=args.judge_model or config.model,
        temperature=_optional_number(args.judge_temperature, "--judge-temperature", float, config.temperature),
        max_tokens=_optional_number(args.judge_max_tokens, "--judge-max-tokens", int, config.max_tokens),
    )


def _activating_tokens(args, dictionaries):
    """The --activations pickle's `A` per (layer, feature), or None; each listed layer must hold
    exactly one of the dictionaries evaluated (the pickle names features by layer)."""
    if not args.activations:
        return None
    from qlens_jax.io.reference_features import read_activating_tokens

    activating = read_activating_tokens(args.activations)
    for layer in sorted({layer for layer, _ in activating}):
        here = [d.name for d in dictionaries if d.layer == layer]
        if len(here) > 1:
            raise InputError(
                f"--activations {args.activations}: layer {layer} holds several dictionaries ({', '.join(here)}); "
                "the pickle names features by layer only: pass one --dictionary per layer"
            )
    return activating


def _judge_cost(args, sigs, vocab) -> None:
    """Print what `--judge` would send for `sigs` (one request per lens and feature)."""
    from qlens_jax.evaluation.judge import estimate

    config = _judge_config(args)
    token_lists = [[str(vocab[t]) for t in row[: args.k]] for table in sigs for row in np.asarray(table.top_ids)]
    shown = 0 if config.scale == "0-10" else 5  # EvaluationOptions.judge_contexts
    contexts = [["x" * 60] * shown] * len(token_lists)  # about one shown context's length each
    numbers = estimate(config, token_lists, contexts)
    line = (
        f"qlens evaluate --judge-cost: {numbers['requests']} requests to {config.model}, about {numbers['input_tokens']:,} "
        f"input and at most {numbers['output_tokens']:,} output tokens"
    )
    if args.judge_price:
        prices = _floats(args.judge_price, "--judge-price")
        if len(prices) != 2:
            raise InputError(
                f"--judge-price {args.judge_price!r}: give USD per million input and output tokens, e.g. 0.05,0.4"
            )
        price_in, price_out = prices
        cost = numbers["input_tokens"] * price_in / 1e6 + numbers["output_tokens"] * price_out / 1e6
        line += f", about {cost:.2f} USD"
    print(line + "; nothing was sent")


def _corpus_windows(args, tokenizer, model_dir: Path, vocab_size: int, quiet: bool):
    """(context windows, their description, the tokenized corpus) of --corpus."""
    from qlens_jax.corpus import tokenize_corpus

    corpus = tokenize_corpus(
        Path(args.corpus).expanduser(),
        tokenizer,
        text_field=args.text_field,
        split=args.corpus_split,
        max_tokens=args.corpus_max_tokens,
        vocab_size=vocab_size,
        quiet=quiet,
        encoding=args.corpus_encoding,
    )
    if corpus.n_tokens and corpus.ids.max() >= vocab_size:
        raise InputError(f"--corpus {args.corpus}: token ids beyond the model's vocabulary ({vocab_size})")
    description = {
        "corpus": str(Path(args.corpus).absolute()),
        "corpus_tokens": corpus.n_tokens,
        "context_length": args.context_length,
        "contexts": args.contexts,
    }
    if args.contexts == "paper":
        windows = _paper_contexts(args, corpus, tokenizer, model_dir)
        description["context_windows"] = int(windows.shape[0])
        return windows.astype(np.int32), description, corpus
    n = corpus.n_tokens // args.context_length
    if n == 0:
        raise InputError(
            f"--corpus {args.corpus}: {corpus.n_tokens} tokens, fewer than one --context-length window ({args.context_length})"
        )
    windows = corpus.ids[: n * args.context_length].reshape(n, args.context_length)
    if args.max_contexts and n > args.max_contexts:
        windows = windows[np.sort(np.random.default_rng(args.seed).choice(n, args.max_contexts, replace=False))]
    description["context_windows"] = int(windows.shape[0])
    return windows.astype(np.int32), description, corpus


def _paper_contexts(args, corpus, tokenizer, model_dir: Path) -> np.ndarray:
    """The authors' activation corpus (`load_pile_corpus`): TransformerLens rows of
    --context-length tokens, --max-contexts (their 4096) of them drawn with replacement by
    torch's generator seeded --seed (fewer rows than asked: as many draws as rows)."""
    from qlens_jax.job.inputs import eos_and_pad_ids
    from qlens_jax.paper_sample import draw_rows, transformer_lens_rows

    eos, pad = eos_and_pad_ids(tokenizer, Path(model_dir))
    if eos is None:
        raise InputError(
            "--contexts paper: the tokenizer names no EOS token, which the paper's rows put between documents"
        )
    rows = transformer_lens_rows(corpus, args.context_length, eos, pad)
    return rows[draw_rows(rows.shape[0], min(args.max_contexts or PAPER_CONTEXTS, rows.shape[0]), args.seed)]


# The authors' activation corpus holds 4096 rows of 128 tokens.
PAPER_CONTEXTS = 4096


def _select(sigs, dictionaries, args, listed=None):
    """Filter the signatures' lenses and features; returns (signatures, features per dictionary,
    the candidate order per (name, layer) of the paper's feature sampling). `listed`: the
    `(layer, feature)` pairs of an --activations pickle, to which the features are restricted."""
    from qlens_jax.job.inputs import parse_ranges
    from qlens_jax.lens.signatures import Signatures, SignatureTable

    if args.lenses:
        wanted = [s.strip() for s in args.lenses.split(",") if s.strip()]
        missing = sorted(set(wanted) - {t.lens for t in sigs})
        if missing:
            raise InputError(
                f"--lenses {args.lenses}: not in --signatures {args.signatures} (have {sorted({t.lens for t in sigs})})"
            )
        sigs = Signatures(t for t in sigs if t.lens in wanted)
    keys = [(d.name, d.layer) for d in dictionaries]
    sigs = Signatures(t for t in sigs if (t.dictionary, t.layer) in keys)  # --layers may have dropped some
    rng = np.random.default_rng(args.seed)
    only = parse_ranges(args.features, "--features") if args.features else None
    features, order = [], {}
    for d in dictionaries:
        tables = [t for t in sigs if (t.dictionary, t.layer) == (d.name, d.layer)]
        ids = (
            np.unique(np.concatenate([np.asarray(t.feature_ids) for t in tables]))
            if tables
            else (np.arange(d.d_sae) if only is None else only)
        )
        if tables:
            common = set(ids.tolist())
            for t in tables:
                common &= set(np.asarray(t.feature_ids).tolist())
            ids = np.asarray(sorted(common), np.int64)
        if only is not None:
            ids = np.intersect1d(ids, only)
        if listed is not None:
            ids = np.intersect1d(ids, np.asarray(sorted(f for layer, f in listed if layer == d.layer), np.int64))
        if args.features_per_dictionary and args.feature_sampling == "paper":
            # The authors' sampler: 10 N candidates in Python's `random.Random(seed).sample` order;
            # `evaluate` keeps the first N with enough active contexts.
            candidates = random.Random(args.seed).sample(ids.tolist(), min(10 * args.features_per_dictionary, len(ids)))
            order[(d.name, d.layer)] = np.asarray(candidates, np.int64)
            ids = np.sort(order[(d.name, d.layer)])
        elif args.features_per_dictionary and len(ids) > args.features_per_dictionary:
            ids = np.sort(rng.choice(ids, args.features_per_dictionary, replace=False))
        if len(ids) and ids.max() >= d.d_sae:
            raise InputError(
                f"--features: feature {int(ids.max())} is out of range for {d.name!r} (layer {d.layer}, {d.d_sae} features)"
            )
        features.append(ids)
    out = Signatures()
    for t in sigs:
        ids = features[keys.index((t.dictionary, t.layer))]
        rows = np.flatnonzero(np.isin(np.asarray(t.feature_ids), ids))
        take = lambda a: np.asarray(a)[rows]
        out.append(
            SignatureTable(
                t.lens,
                t.dictionary,
                t.layer,
                take(t.feature_ids),
                take(t.top_ids),
                take(t.top_scores),
                take(t.bottom_ids),
                take(t.bottom_scores),
            )
        )
    return out, features, order


def _baseline_sample(args, windows_source, model, quiet):
    from qlens_jax.corpus import load_token_sample

    if args.token_sample:
        return load_token_sample(args.token_sample, model.config.vocab_size), {
            "token_sample": str(Path(args.token_sample).absolute())
        }
    if args.signatures and Path(args.signatures).is_dir() and (Path(args.signatures) / "sample.npy").is_file():
        path = Path(args.signatures) / "sample.npy"
        return load_token_sample(path, model.config.vocab_size), {"token_sample": str(path.absolute())}
    from qlens_jax.corpus import sample_windows

    tokens, mask = sample_windows(windows_source, args.num_samples, args.max_length, args.seed)
    return (tokens, mask), {"corpus_windows": args.num_samples, "max_length": args.max_length, "seed": args.seed}


def run_evaluate(args, argv: list[str] | None = None, parser=None) -> int:
    """Run `qlens evaluate` with parsed `args` (`argv` and `parser`: to apply --protocol); returns the exit code."""
    from qlens_jax.baselines import (
        TunedLensTraining,
        all_points,
        baseline_signatures,
        library_points,
        load_tuned_lens,
        save_tuned_lens,
        train_tuned_lens,
    )
    from qlens_jax.baselines.api import tuned_lens_point
    from qlens_jax.baselines.tuned_lens import final_row
    from qlens_jax.evaluation.figure4 import write_figure4
    from qlens_jax.evaluation.prefixes import NEUTRAL_PREFIXES, prefix_batch, read_prefixes
    from qlens_jax.evaluation.report import write_report
    from qlens_jax.evaluation.run import EvaluationOptions, evaluate
    from qlens_jax.evaluation.showcase import feature_records, model_display_name, write_feature_records
    from qlens_jax.evaluation.sources import load_signatures, save_signatures
    from qlens_jax.evaluation.table8 import write_table8
    from qlens_jax.job.inputs import bos_token_id, load_dictionary_sources, load_model_source, vocab_strings
    from qlens_jax.lens.options import ExecutionOptions, LensOptions
    from qlens_jax.lens.signatures import Signatures

    started = time.time()
    quiet = args.quiet
    if args.protocol == "paper":
        from qlens_jax.protocol import PAPER_EVALUATE, apply_protocol

        sampling = {"feature_sampling": "paper"} if args.features_per_dictionary else {}
        apply_protocol(args, parser, argv or [], {**PAPER_EVALUATE, **sampling})
    _check(args)
    options = EvaluationOptions(
        k=args.k,
        min_contexts=args.min_contexts,
        kl_targets=_floats(args.kl_targets, "--kl-targets"),
        top_s=args.top_promoted,
        generate_tokens=args.generate_tokens,
        temperature=float(args.temperature),
        output_resamples=args.output_resamples,
        showcase_prefixes=args.showcase_prefixes,
        showcase_tokens=args.showcase_tokens,
        match=args.match,
        seed=args.seed,
        kl_positions=args.kl_positions,
        alpha_search=args.alpha_search,
        error_term=not args.no_error_term,
        require_contexts=args.require_contexts or args.feature_sampling == "paper",
        max_features=args.features_per_dictionary if args.feature_sampling == "paper" else None,
    )
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    model, model_dir, tokenizer = load_model_source(model_source(args))
    if args.dtype != "float32":
        from qlens_jax.numerics import cast_model

        model = cast_model(model, args.dtype)
    dictionaries = load_dictionary_sources(dictionary_sources(args), model)
    vocab = vocab_strings(tokenizer, model.config.vocab_size)
    sigs = load_signatures(args.signatures) if args.signatures else Signatures()
    activating = _activating_tokens(args, dictionaries)
    sigs, features, order = _select(sigs, dictionaries, args, None if activating is None else set(activating))
    if args.judge_cost:
        _judge_cost(args, sigs, vocab)
        return 0
    windows, description, corpus = _corpus_windows(args, tokenizer, model_dir, model.config.vocab_size, quiet)
    record = {
        "command": sys.argv,
        "inputs": {
            "model": str(model_dir),
            "dictionaries": [f"{d.name}/{d.layer}" for d in dictionaries],
            "signatures": args.signatures,
            **description,
        },
        "options": {
            k: v
            for k, v in vars(args).items()
            if not k.startswith("_") and isinstance(v, (str, int, float, bool, type(None), tuple, list))
        },
    }
    if args.baselines:
        (tokens, mask), sample = _baseline_sample(args, corpus, model, quiet)
        record["baseline_sample"] = sample
        translators = None
        if args.tuned_lens:
            translators = load_tuned_lens(args.tuned_lens, model)
        elif args.train_tuned_lens:
            points = sorted(
                {
                    tuned_lens_point(d, model.config.n_layers, args.tuned_lens_point, model.config.parallel_residual)
                    for d in dictionaries
                }
                - {final_row(model.config.n_layers)}
            )
            use = (
                library_points(model.config.n_layers)
                if set(points) <= set(library_points(model.config.n_layers))
                else all_points(model.config.n_layers)
            )
            split = max(1, int(0.9 * len(windows)))
            translators, training = train_tuned_lens(
                model,
                windows[:split],
                points=use,
                options=TunedLensTraining(steps=args.tuned_lens_steps, seed=args.seed),
                heldout=(windows[split:], None) if split < len(windows) else None,
                quiet=quiet,
            )
            save_tuned_lens(
                translators,
                out / "tuned_lens",
                record={
                    "options": training.options,
                    "points": list(training.points),
                    "heldout_kl_identity": training.heldout_kl_identity,
                    "heldout_kl_trained": training.heldout_kl_trained,
                    "final_train_loss": training.train_loss[-1],
                },
            )
            record["tuned_lens"] = {
                "points": list(training.points),
                "heldout_kl_identity": training.heldout_kl_identity,
                "heldout_kl_trained": training.heldout_kl_trained,
            }
        wanted = {i: ids for i, ids in enumerate(features) if len(ids)}
        baselines = baseline_signatures(
            model,
            dictionaries,
            tokens,
            mask,
            lenses=args.baselines,
            features=wanted,
            options=LensOptions(k=args.k, precision=args.precision),
            execution=ExecutionOptions(quiet=quiet),
            translators=translators,
            tuned_lens_point_choice=args.tuned_lens_point,
        )
        save_signatures(baselines, out / "baselines.parquet", dictionaries, vocab)
        sigs = Signatures([*sigs, *baselines])
    if not len(sigs):
        raise InputError("no signatures left to evaluate after --lenses / --layers / --features")
    if args.prefixes:
        prefixes = read_prefixes(args.prefixes)
    else:
        prefixes = list(NEUTRAL_PREFIXES)
    bos = bos_token_id(args.bos_id, tokenizer, Path(model_dir)) if args.prepend_bos else None
    if args.prepend_bos and bos is None:
        raise InputError("--prepend-bos: the tokenizer names no BOS token; give its id with --bos-id")
    prefix_tokens, prefix_mask = prefix_batch(tokenizer, prefixes, bos_id=bos)
    result = evaluate(
        model,
        dictionaries,
        sigs,
        windows,
        prefix_tokens=prefix_tokens,
        prefix_mask=prefix_mask,
        options=options,
        vocab=vocab,
        judge=_judge_config(args) if args.judge else None,
        quiet=quiet,
        feature_order=order,
        activating_tokens=activating,
    )
    scores = ("input_score", "output_score", "judge_score") if args.judge else ("input_score", "output_score")
    preamble = (
        f"Evaluation of {len(sigs)} signature tables on {description['context_windows']} context windows of "
        f"{args.context_length} tokens; token sets compared by {args.match}."
    )
    paths = write_report(out, result.rows, result.per_layer, result.overall, scores, preamble=preamble)
    paths.update(write_table8(out, result.rows))
    records = feature_records(result, sigs, windows, prefix_tokens, vocab, dictionaries, args.k)
    document = {"model": model_display_name(args.model, model_dir), "k": args.k, "features": records}
    write_feature_records(out, document["model"], args.k, records)
    if args.figure4_features:
        paths.update(
            write_figure4(out, document, args.figure4_key_lens, args.figure4_value_lens, args.figure4_features)
        )
    record["seconds"] = round(time.time() - started, 1)
    record["evaluation_options"] = result.options
    record["judge_error"] = result.judge_error
    (out / "evaluation.json").write_text(json.dumps(record, indent=1, default=str))
    print(f"qlens evaluate: {len(result.rows)} (lens, feature) rows -> {paths['table_md']} ({record['seconds']} s)")
    if result.judge_error:
        print(
            f"qlens evaluate: the judge stopped: {result.judge_error} (the scores finished before are written; "
            "the rest are NaN)",
            file=sys.stderr,
        )
        return 2
    return 0
