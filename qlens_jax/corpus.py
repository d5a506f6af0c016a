"""The token sample: a corpus read and tokenized, then seeded fixed-length windows.

The reference implementation's convention (docs/definitions.md section 1), reproduced by default:
every document is tokenized without special tokens, the token ids of all documents are
concatenated in corpus order, and `num_samples` windows of `max_length` tokens are drawn
with replacement (start offsets uniform over the concatenation, `numpy.random.default_rng(seed)`).
No BOS is prepended unless asked (`prepend_bos`: BOS then `max_length - 1` corpus tokens).
All positions are valid then; `windows="document"` instead draws each window inside one
document (documents uniform with replacement) and right-pads short documents with a mask.

Corpus formats: a plain text file (one document: the whole file), a JSONL file (one
document per line, from `text_field`), a folder written by `datasets`' `save_to_disk`
(`text_field` of each row; a `DatasetDict` needs `split`), or a `.npy` of token ids (one
already tokenized, concatenated corpus, 1-D). Text and JSONL files are decoded with
`encoding` (UTF-8 unless told); a byte that does not decode is an error naming the file and
the byte's offset.

Token-sample files (`load_token_sample` / `save_token_sample`): a `.npy` int array
`[num_samples, max_length]` in which negative entries (-1) mark padding; padding must be
on the right of each row.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qlens_jax.errors import InputError
from qlens_jax.progress import progress

FORMATS = ("text", "jsonl", "datasets", "npy")
WINDOWS = ("concat", "document")
_BATCH = 512


class CorpusError(InputError):
    """A corpus or token sample that cannot give the requested sample."""


@dataclass(frozen=True)
class TokenizedCorpus:
    """Token ids of every document, concatenated; `starts[i]:starts[i+1]` is document `i`."""

    source: str
    format: str
    ids: np.ndarray
    starts: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.ids.size)

    @property
    def n_documents(self) -> int:
        return int(self.starts.size - 1)


def detect_format(path: Path) -> str:
    """The corpus format of `path` from what it is (a folder) or its suffix."""
    if path.is_dir():
        if any((path / name).exists() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "datasets"
        raise CorpusError(f"--corpus {path}: a folder, but not one written by datasets' save_to_disk")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return "jsonl"
    if suffix == ".npy":
        return "npy"
    return "text"


def check_encoding(encoding: str) -> None:
    """`--corpus-encoding`: a text codec Python knows (`utf-8`, `latin-1`, `cp1252`, ...)."""
    try:
        "".encode(encoding)
    except LookupError as err:
        raise CorpusError(f"--corpus-encoding {encoding!r}: not a text codec Python knows ({err})") from None


def first_undecodable_byte(path: Path, encoding: str) -> tuple[int, str] | None:
    """(offset of the first byte of `path` that `encoding` cannot decode, the codec's reason),
    or None if the whole file decodes. Reads the file in chunks, so any size works."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            pending = len(decoder.getstate()[0])  # bytes held back from the previous chunk
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                return offset - pending + err.start, err.reason
            if not chunk:
                return None
            offset += len(chunk)


def _decode_error(path: Path, encoding: str, err: UnicodeDecodeError) -> CorpusError:
    found = first_undecodable_byte(path, encoding)
    offset, reason = found if found else (err.start, err.reason)
    return CorpusError(
        f"--corpus {path}: not valid {encoding} text: byte {offset} (0x{_byte_at(path, offset):02x}) "
        f"does not decode ({reason}); give the file's encoding with --corpus-encoding, e.g. latin-1"
    )


def _byte_at(path: Path, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        byte = f.read(1)
    return byte[0] if byte else 0


def _jsonl_documents(path: Path, text_field: str, encoding: str = "utf-8") -> Iterator[str]:
    try:
        yield from _jsonl_records(path, text_field, encoding)
    except UnicodeDecodeError as err:
        raise _decode_error(path, encoding, err) from None


def _jsonl_records(path: Path, text_field: str, encoding: str) -> Iterator[str]:
    with open(path, encoding=encoding) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise CorpusError(f"--corpus {path}: line {number} is not JSON ({err.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise CorpusError(
                    f"--corpus {path}: line {number} has no string field {text_field!r} (see --text-field)"
                )
            yield record[text_field]


def _datasets_documents(path: Path, text_field: str, split: str | None) -> Iterator[str]:
    import datasets

    try:
        data = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises several types for unreadable folders
        raise CorpusError(f"--corpus {path}: cannot be read by datasets.load_from_disk ({err})") from None
    if isinstance(data, datasets.DatasetDict):
        splits = list(data)
        chosen = split or ("train" if "train" in splits else (splits[0] if len(splits) == 1 else None))
        if chosen not in data:
            raise CorpusError(f"--corpus {path}: choose a split with --corpus-split (have {splits})")
        data = data[chosen]
    elif split is not None:
        raise CorpusError(f"--corpus {path}: holds one split; --corpus-split {split!r} does not apply")
    if text_field not in data.column_names:
        raise CorpusError(f"--corpus {path}: no column {text_field!r} (columns: {data.column_names}; see --text-field)")
    for batch in data.select_columns([text_field]).iter(batch_size=_BATCH):
        yield from batch[text_field]


def documents(
    path: Path, fmt: str, text_field: str = "text", split: str | None = None, encoding: str = "utf-8"
) -> Iterator[str]:
    """The documents of a text corpus, in order (text and JSONL files decoded with `encoding`)."""
    if fmt == "text":
        try:
            text = path.read_text(encoding=encoding)
        except UnicodeDecodeError as err:
            raise _decode_error(path, encoding, err) from None
        yield text
    elif fmt == "jsonl":
        yield from _jsonl_documents(path, text_field, encoding)
    elif fmt == "datasets":
        yield from _datasets_documents(path, text_field, split)
    else:
        raise CorpusError(f"--corpus {path}: format {fmt!r} holds no text")


def _batches(items: Iterator[str], size: int) -> Iterator[list[str]]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def tokenize_corpus(
    path: str | Path,
    tokenizer,
    *,
    fmt: str | None = None,
    text_field: str = "text",
    split: str | None = None,
    max_tokens: int | None = None,
    vocab_size: int | None = None,
    quiet: bool = True,
    encoding: str = "utf-8",
) -> TokenizedCorpus:
    """Read and tokenize a corpus (no special tokens); stop after `max_tokens` tokens.
    `encoding` (any Python text codec) decodes text and JSONL files."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"--corpus {path}: no such file or directory")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise CorpusError(f"--corpus-format {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "npy":
        ids = _load_npy(path, "--corpus")
        if ids.ndim != 1:
            raise CorpusError(
                f"--corpus {path}: a .npy corpus is 1-D token ids, got shape {ids.shape} "
                "(a [num_samples, max_length] array is a --token-sample)"
            )
        _check_ids(ids, vocab_size, f"--corpus {path}")
        ids = ids[:max_tokens] if max_tokens else ids
        return TokenizedCorpus(str(path), fmt, ids.astype(np.int32), np.asarray([0, ids.size]))
    pieces, lengths, total, has_text = [], [], 0, False
    check_encoding(encoding)
    docs = progress(documents(path, fmt, text_field, split, encoding), desc="sample: tokenize", quiet=quiet, unit="doc")
    for batch in _batches(iter(docs), _BATCH):
        has_text = has_text or any(doc and not doc.isspace() for doc in batch)
        for encoding in tokenizer.encode_batch(batch, add_special_tokens=False):
            ids = np.asarray(encoding.ids, np.int32)
            if max_tokens:
                ids = ids[: max_tokens - total]
            pieces.append(ids)
            lengths.append(ids.size)
            total += ids.size
            if max_tokens and total >= max_tokens:
                break
        if max_tokens and total >= max_tokens:
            break
    if not has_text:
        raise CorpusError(
            f"--corpus {path}: holds no text, only empty or whitespace lines (a sample of it would repeat "
            "one whitespace token); give a corpus with text"
        )
    ids = np.concatenate(pieces) if pieces else np.zeros(0, np.int32)
    starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]) if lengths else np.zeros(1, np.int64)
    return TokenizedCorpus(str(path), fmt, ids, starts.astype(np.int64))


def _load_npy(path: Path, option: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise CorpusError(f"{option} {path}: not a readable .npy array ({err})") from None
    if not np.issubdtype(array.dtype, np.integer):
        raise CorpusError(f"{option} {path}: token ids must be integers, got dtype {array.dtype}")
    return array


def _check_ids(ids: np.ndarray, vocab_size: int | None, what: str) -> None:
    if ids.size and (ids.min() < 0 or (vocab_size is not None and ids.max() >= vocab_size)):
        raise CorpusError(f"{what}: token ids must lie in [0, {vocab_size}); got range [{ids.min()}, {ids.max()}]")


def sample_windows(
    corpus: TokenizedCorpus,
    num_samples: int,
    max_length: int,
    seed: int,
    *,
    prepend_bos: bool = False,
    bos_id: int | None = None,
    windows: str = "concat",
) -> tuple[np.ndarray, np.ndarray]:
    """`tokens [num_samples, max_length]` int32 and its right-padding `mask`.

    The corpus must hold at least `num_samples x body` tokens (`body` = `max_length`, less
    one with BOS): windows are drawn with replacement, but a corpus smaller than the sample
    would mostly repeat itself, so it is refused rather than silently reused.
    """
    if num_samples < 1 or max_length < 1:
        raise CorpusError(f"--num-samples and --max-length must be positive, got {num_samples} and {max_length}")
    if windows not in WINDOWS:
        raise CorpusError(f"--windows {windows!r} is not one of {', '.join(WINDOWS)}")
    if prepend_bos and bos_id is None:
        raise CorpusError("--prepend-bos: the tokenizer names no BOS token; give its id with --bos-id")
    body = max_length - int(prepend_bos)
    if body < 1:
        raise CorpusError(f"--max-length {max_length} leaves no room for corpus tokens after BOS")
    needed = num_samples * body
    if corpus.n_tokens < needed:
        raise CorpusError(
            f"--corpus {corpus.source}: {corpus.n_tokens} tokens, but a sample of {num_samples} windows "
            f"of {body} corpus tokens needs at least {needed}; give more text or lower --num-samples / --max-length"
        )
    rng = np.random.default_rng(seed)
    offsets = np.arange(body)
    if windows == "concat":
        starts = rng.integers(0, corpus.n_tokens - body + 1, size=num_samples)
        lengths = np.full(num_samples, body)
    else:
        lengths_all = np.diff(corpus.starts)
        nonempty = np.flatnonzero(lengths_all > 0)
        docs = nonempty[rng.integers(0, nonempty.size, size=num_samples)]
        room = np.maximum(lengths_all[docs] - body, 0)
        starts = corpus.starts[docs] + rng.integers(0, room + 1)
        lengths = np.minimum(lengths_all[docs], body)
    mask = offsets[None, :] < lengths[:, None]
    gathered = corpus.ids[np.minimum(starts[:, None] + offsets[None, :], corpus.n_tokens - 1)]
    tokens = np.where(mask, gathered, 0).astype(np.int32)
    if prepend_bos:
        tokens = np.concatenate([np.full((num_samples, 1), bos_id, np.int32), tokens], axis=1)
        mask = np.concatenate([np.ones((num_samples, 1), bool), mask], axis=1)
    return tokens, mask


def load_token_sample(path: str | Path, vocab_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A given sample: `.npy` ids `[num_samples, max_length]`, negative entries = padding."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"--token-sample {path}: no such file")
    array = _load_npy(path, "--token-sample")
    if array.ndim != 2 or 0 in array.shape:
        raise CorpusError(
            f"--token-sample {path}: expected a non-empty [num_samples, max_length] array, got shape {array.shape}"
        )
    mask = array >= 0
    if (np.diff(mask.astype(np.int8), axis=1) > 0).any():
        row = int(np.flatnonzero((np.diff(mask.astype(np.int8), axis=1) > 0).any(1))[0])
        raise CorpusError(f"--token-sample {path}: row {row} has padding (-1) before a token; pad on the right only")
    if not mask.any():
        raise CorpusError(f"--token-sample {path}: every entry is padding")
    _check_ids(array[mask], vocab_size, f"--token-sample {path}")
    return np.where(mask, array, 0).astype(np.int32), mask


def save_token_sample(path: Path, tokens: np.ndarray, mask: np.ndarray) -> None:
    """Write a sample in `load_token_sample`'s convention (-1 at pads)."""
    with open(path, "wb") as f:
        np.save(f, np.where(mask, tokens, -1).astype(np.int32), allow_pickle=False)
