"""Retrain the bundled default: `python -m qlens_jax.default.training [--stages ...]`.

Stages (each reads what the previous ones wrote, so they can be rerun one at a time):
  data          corpus from Debian's r-cran-janeaustenr -> tokenizer + data/heldout.txt
  model         GPT-2 training -> artifacts/model (Hugging Face folder)
  dictionaries  activations of the trained model -> artifacts/dictionaries/* (SAELens folders)
  evaluate      artifacts/quality.json (held-out loss, explained variance, L0, dead features)
Everything is recorded in artifacts/training.json. Seeds: `--seed` (default 0).
"""

from __future__ import annotations

import os

# XLA's CPU backend in jaxlib 0.10.2 miscompiles some reductions of batched cotangents (see
# docs/definitions.md section 2); this flag avoids the affected fusion. Set before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=-reduce")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from qlens_jax import default as paths  # noqa: E402
from qlens_jax.default.training import (
    corpus as corpus_lib,  # noqa: E402
    tokenizer as tok_lib,  # noqa: E402
)
from qlens_jax.default.training.export import load_hf_model, save_hf_model, update_training_record, write_json  # noqa: E402

STAGES = ("data", "model", "dictionaries", "evaluate")
VOCAB_SIZE = 4096
HELDOUT_FRACTION = 0.04

LICENSE_TEXT = """\
heldout.txt: the last ~4% (by characters, cut at a paragraph boundary) of each of Jane
Austen's six novels -- Sense and Sensibility, Pride and Prejudice, Mansfield Park, Emma,
Northanger Abbey, Persuasion -- separated by <|endoftext|>. Hard-wrapped lines were unwrapped
into paragraphs; nothing else was changed.

The novels are in the public domain (Project Gutenberg texts). They were taken from the R
package janeaustenr 1.0.0 (Julia Silge, https://github.com/juliasilge/janeaustenr), as packaged
by Debian (r-cran-janeaustenr 1.0.0-1), whose licence, covering the package, is:

MIT License

Copyright (c) 2016-2017 Julia Silge

Permission is hereby granted, free of charge, to any person obtaining a copy of this software
and associated documentation files (the "Software"), to deal in the Software without
restriction, including without limitation the rights to use, copy, modify, merge, publish,
distribute, sublicense, and/or sell copies of the Software, and to permit persons to whom the
Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or
substantial portions of the Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING
BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND
NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM,
DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,
OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
"""


def _versions() -> dict:
    import equinox
    import jax
    import optax
    import tokenizers

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "equinox": equinox.__version__,
        "optax": optax.__version__,
        "tokenizers": tokenizers.__version__,
        "numpy": np.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
    }


def _corpus(cache: Path) -> tuple[corpus_lib.Corpus, dict, list]:
    package_dir, source = corpus_lib.locate_package(cache)
    corpus, stats = corpus_lib.load_corpus(package_dir, HELDOUT_FRACTION)
    return corpus, source, stats


def stage_data(args) -> None:
    t0 = time.time()
    corpus, source, stats = _corpus(args.cache)
    tok = tok_lib.train_tokenizer(corpus.train, VOCAB_SIZE)
    model_dir = paths.model_dir()
    tok_lib.save_tokenizer(tok, model_dir, model_max_length=128)
    paths.data_dir().mkdir(parents=True, exist_ok=True)
    paths.heldout_text_path().write_text(corpus.heldout, encoding="utf-8")
    (paths.data_dir() / "LICENSE.txt").write_text(LICENSE_TEXT)
    train_ids = tok_lib.encode(tok, corpus.train)
    heldout_ids = tok_lib.encode(tok, corpus.heldout)
    update_training_record(
        {
            "seed": args.seed,
            "versions": _versions(),
            "data": {
                "source": (
                    "Jane Austen's six novels (public domain, Project Gutenberg texts) from the R package "
                    "janeaustenr 1.0.0 (MIT, Julia Silge) as packaged by Debian: r-cran-janeaustenr 1.0.0-1 "
                    "(bookworm, main). Fetched with `apt-get download r-cran-janeaustenr`; read without R."
                ),
                "license": "text: public domain; janeaustenr package: MIT",
                "package": source,
                "novels": stats,
                "preprocessing": "lines unwrapped into paragraphs (runs of spaces collapsed), paragraphs "
                "joined by a blank line, novels joined by <|endoftext|>",
                "heldout": f"last {HELDOUT_FRACTION:.0%} of the characters of each novel, at a paragraph boundary",
                "train_chars": len(corpus.train),
                "heldout_chars": len(corpus.heldout),
                "train_sha256": corpus_lib.sha256_text(corpus.train),
                "heldout_sha256": corpus_lib.sha256_text(corpus.heldout),
                "train_tokens": len(train_ids),
                "heldout_tokens": len(heldout_ids),
            },
            "tokenizer": {
                "kind": "byte-level BPE (GPT-2 pre-tokenizer, no prefix space), tokenizers.BpeTrainer",
                "vocab_size": VOCAB_SIZE,
                "min_frequency": 2,
                "special_tokens": {"<|endoftext|>": 0},
                "trained_on": "training split only",
                "seconds": round(time.time() - t0, 1),
            },
        }
    )
    print(f"data: {len(train_ids)} train tokens, {len(heldout_ids)} held-out tokens")


def _token_streams(cache: Path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(paths.model_dir() / "tokenizer.json"))
    corpus, _, _ = _corpus(cache)
    heldout = paths.heldout_text_path().read_text(encoding="utf-8")
    if heldout != corpus.heldout:
        raise ValueError("data/heldout.txt differs from the corpus split: rerun the data stage")
    train = np.asarray(tok_lib.encode(tok, corpus.train), dtype=np.int32)
    return train, np.asarray(tok_lib.encode(tok, heldout), dtype=np.int32)


def stage_model(args) -> None:
    import jax

    from qlens_jax.default.training.gpt2 import GPT2Config
    from qlens_jax.default.training.lm import LMHyperparameters, heldout_windows, train_lm

    config = GPT2Config(vocab_size=VOCAB_SIZE)
    hp = LMHyperparameters()
    train, heldout = _token_streams(args.cache)
    t0 = time.time()
    model, history = train_lm(train, heldout_windows(heldout, config.n_positions), config, hp, args.seed)
    seconds = time.time() - t0
    save_hf_model(model, paths.model_dir(), eos_token_id=0)
    n_params = sum(int(x.size) for x in jax.tree.leaves(model))
    update_training_record(
        {
            "model": {
                "architecture": "GPT-2 (pre-LN, learned positions, gelu_new, tied unembedding)",
                "config": dataclasses.asdict(config),
                "parameters": n_params,
                "init": "N(0, 0.02); attention/MLP output projections N(0, 0.02/sqrt(2 n_layers)); wpe N(0, 0.01)",
                "hyperparameters": dataclasses.asdict(hp),
                "optimizer": "optax: clip_by_global_norm -> adamw, warmup_cosine_decay_schedule",
                "batches": "windows of n_positions+1 tokens drawn uniformly with replacement from the "
                "training stream (numpy default_rng(seed)); no BOS",
                "seed": args.seed,
                "history": history,
                "seconds": round(seconds, 1),
            }
        }
    )


def stage_dictionaries(args) -> None:
    from qlens_jax.default.training import dictionaries as dict_lib

    model = load_hf_model(paths.model_dir())
    train, _ = _token_streams(args.cache)
    specs = dict_lib.default_specs(model.config.n_layers, paths.TRANSCODER_LAYER)
    if args.only:
        specs = [s for s in specs if s.name in args.only]
    records = json.loads(paths.training_record_path().read_text()).get("dictionaries", {})
    t0 = time.time()
    acts = dict_lib.cache_activations(model, train, specs)
    cache_seconds = time.time() - t0
    for spec in specs:
        folder = paths.dictionaries_dir() / spec.name
        if folder.exists():
            shutil.rmtree(folder)
        record = dict_lib.train_and_save(spec, acts, folder, seed=args.seed + 1 + dict_lib.spec_index(spec))
        record["activation_cache_seconds"] = round(cache_seconds, 1)
        records[spec.name] = record
        update_training_record({"dictionaries": records})


def stage_evaluate(args) -> None:
    from qlens_jax.default.training.evaluate import evaluate

    quality = evaluate()
    write_json(paths.quality_path(), quality)
    update_training_record({"final_metrics": {"model": quality["model"], "dictionaries": quality["dictionaries"]}})
    print(json.dumps(quality, indent=2))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--only", nargs="+", help="dictionaries stage: train only these dictionaries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "qlens-default", help="where the .deb is unpacked"
    )
    args = parser.parse_args(argv)
    for stage in STAGES:
        if stage in args.stages:
            t0 = time.time()
            globals()[f"stage_{stage}"](args)
            print(f"stage {stage}: {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
