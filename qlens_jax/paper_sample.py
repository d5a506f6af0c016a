"""The token sample built the way the authors of Query Lens build theirs (`--windows paper`).

Their code (`util.load_pile_sample`) runs TransformerLens's `tokenize_and_concatenate` over the
corpus (`add_bos_token=False`, `num_proc=4`), keeps all rows but the last 1,000, and draws
`num_samples` row indices with replacement by `torch.randint` from a generator seeded with the
config's seed (42 in every configuration of the paper). Reproduced here without TransformerLens,
`datasets` or torch, on the project's own tokenized corpus:

- `transformer_lens_rows`: `datasets.Dataset.map(batched=True, num_proc=shards)` splits the
  documents into `shards` contiguous shards (the first `n % shards` one document longer), and
  each shard into batches of 1,000 documents. In each batch, every document is tokenized
  without special tokens and the documents are joined with one EOS id between them (none
  after the last); the result is cut into rows of `max_length` tokens and the remainder is
  dropped. A batch shorter than one row gives one row, padded with the tokenizer's pad id
  (EOS when it has none). The rows of all batches follow in corpus order.
- `draw_rows`: `torch.randint(0, n, (k,), generator=torch.Generator().manual_seed(seed))`
  takes, on CPU and for `n < 2**31`, `u % n` of the Mersenne Twister's 32-bit outputs `u`;
  `numpy.random.RandomState(seed)` is the same generator with the same seeding, so the same
  indices come out (checked against torch in the tests).

Every row is full length, so the mask is all true; no BOS is prepended (`add_bos_token=False`).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Bool, Int

from qlens_jax.corpus import CorpusError, TokenizedCorpus

# What the authors' `load_pile_sample` passes or does.
PAPER_SHARDS = 4  # num_proc=4
MAP_BATCH = 1000  # datasets.Dataset.map's default batch_size
HELD_OUT_ROWS = 1000  # pile[:-1000]
PAPER_SEED = 42  # seed: 42 in every conf/*.yaml

# torch.randint draws 64-bit numbers for wider ranges; that path is not reproduced.
_MAX_ROWS = 2**31


def _shard_bounds(n_documents: int, shards: int) -> list[tuple[int, int]]:
    """`datasets.Dataset.shard(shards, i, contiguous=True)` for every `i`: [start, stop) pairs."""
    shards = max(1, min(shards, n_documents))
    div, mod = divmod(n_documents, shards)
    bounds, start = [], 0
    for i in range(shards):
        stop = start + div + (1 if i < mod else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def _batch_rows(
    corpus: TokenizedCorpus, first: int, stop: int, max_length: int, eos_id: int, pad_id: int
) -> np.ndarray:
    """The rows `tokenize_and_concatenate` makes of documents `first .. stop - 1` (one map batch)."""
    pieces = []
    for doc in range(first, stop):
        pieces.append(corpus.ids[corpus.starts[doc] : corpus.starts[doc + 1]])
        if doc < stop - 1:
            pieces.append(np.asarray([eos_id], corpus.ids.dtype))
    tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    if tokens.size < max_length:
        return np.concatenate([tokens, np.full(max_length - tokens.size, pad_id, tokens.dtype)])[None]
    n_rows = tokens.size // max_length
    return tokens[: n_rows * max_length].reshape(n_rows, max_length)


def transformer_lens_rows(
    corpus: TokenizedCorpus,
    max_length: int,
    eos_id: int,
    pad_id: int | None = None,
    *,
    shards: int = PAPER_SHARDS,
    batch_size: int = MAP_BATCH,
) -> Int[np.ndarray, "rows max_length"]:
    """The rows of TransformerLens's `tokenize_and_concatenate(..., add_bos_token=False,
    num_proc=shards)` on `corpus` (see the module docstring). `pad_id`: the tokenizer's own pad
    token, None when it has none (then short batches are padded with EOS, as TransformerLens does)."""
    if corpus.format == "npy":
        raise CorpusError(
            f"--windows paper: --corpus {corpus.source} is a .npy of token ids without document "
            "boundaries; the paper's rows put EOS between documents: give the text corpus"
        )
    if max_length < 1:
        raise CorpusError(f"--max-length must be positive, got {max_length}")
    pad = eos_id if pad_id is None else pad_id
    rows = []
    for start, stop in _shard_bounds(corpus.n_documents, shards):
        for first in range(start, stop, batch_size):
            rows.append(_batch_rows(corpus, first, min(first + batch_size, stop), max_length, eos_id, pad))
    if not rows:
        raise CorpusError(f"--corpus {corpus.source}: holds no documents")
    return np.concatenate(rows).astype(np.int32)


def draw_rows(n_rows: int, num_samples: int, seed: int) -> Int[np.ndarray, " num_samples"]:
    """Row indices as `torch.randint(0, n_rows, (num_samples,), generator=manual_seed(seed))` on CPU."""
    if not 0 < n_rows < _MAX_ROWS:
        raise CorpusError(f"--windows paper: {n_rows} rows to draw from; need between 1 and {_MAX_ROWS - 1}")
    if not 0 <= seed < 2**32:
        raise CorpusError(f"--seed {seed}: the paper's sampler takes seeds in [0, 2**32)")
    draws = np.random.RandomState(seed).randint(0, 2**32, size=num_samples, dtype=np.uint32)
    return (draws.astype(np.int64) % n_rows).astype(np.int64)


def paper_sample(
    corpus: TokenizedCorpus,
    num_samples: int,
    max_length: int,
    seed: int,
    eos_id: int | None,
    pad_id: int | None = None,
    *,
    held_out_rows: int = HELD_OUT_ROWS,
    shards: int = PAPER_SHARDS,
) -> tuple[Int[np.ndarray, "num_samples max_length"], Bool[np.ndarray, "num_samples max_length"]]:
    """`(tokens, mask)` as the authors' `load_pile_sample(num_samples, max_length, seed)` on `corpus`:
    TransformerLens rows, the last `held_out_rows` dropped, rows drawn with replacement."""
    if num_samples < 1:
        raise CorpusError(f"--num-samples must be positive, got {num_samples}")
    if eos_id is None:
        raise CorpusError(
            "--windows paper: the tokenizer names no EOS token, which the paper's rows put between documents"
        )
    rows = transformer_lens_rows(corpus, max_length, eos_id, pad_id, shards=shards)
    if rows.shape[0] <= held_out_rows:
        raise CorpusError(
            f"--windows paper: --corpus {corpus.source} gives {rows.shape[0]} rows of {max_length} tokens, and the "
            f"paper's recipe holds out the last {held_out_rows}; give more text or use --windows concat"
        )
    kept = rows[: rows.shape[0] - held_out_rows]
    tokens = kept[draw_rows(kept.shape[0], num_samples, seed)]
    return tokens, np.ones(tokens.shape, bool)
