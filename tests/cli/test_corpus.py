"""Corpus formats and the seeded window sampling (docs/definitions.md section 1's convention), and the
CLI reading each format (Logit Lens only: no transport, the readouts compiled by the full run)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

import converters
from qlens_jax.cli import main
from qlens_jax.corpus import (
    CorpusError,
    TokenizedCorpus,
    load_token_sample,
    sample_windows,
    save_token_sample,
    tokenize_corpus,
)
from world import base_args, corpus_documents, drop


@pytest.fixture(scope="module")
def tokenizer(world):
    return converters.load_tokenizer(world.model)


@pytest.fixture(scope="module")
def documents():
    return corpus_documents()[:5]


def _encode(tokenizer, text):
    return tokenizer.encode(text, add_special_tokens=False).ids


def test_every_format_gives_the_same_tokens(tokenizer, documents, tmp_path):
    import datasets

    text = "\n\n".join(documents)
    (tmp_path / "one.txt").write_text(text)
    (tmp_path / "one.jsonl").write_text(json.dumps({"text": text}) + "\n")
    datasets.Dataset.from_dict({"text": [text], "other": [1]}).save_to_disk(str(tmp_path / "one-ds"))
    expected = _encode(tokenizer, text)
    np.save(tmp_path / "ids.npy", np.asarray(expected, np.int64))
    for name, fmt in (("one.txt", "text"), ("one.jsonl", "jsonl"), ("one-ds", "datasets"), ("ids.npy", "npy")):
        corpus = tokenize_corpus(tmp_path / name, tokenizer)
        assert corpus.format == fmt
        assert corpus.ids.tolist() == expected and corpus.starts.tolist() == [0, len(expected)], name


def test_documents_are_tokenized_alone_and_concatenated(tokenizer, documents, tmp_path):
    import datasets

    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"body": d}) + "\n\n" for d in documents))
    datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"body": documents})}).save_to_disk(
        str(tmp_path / "ds")
    )
    pieces = [_encode(tokenizer, d) for d in documents]
    for name in ("docs.jsonl", "ds"):
        corpus = tokenize_corpus(tmp_path / name, tokenizer, text_field="body")
        assert corpus.ids.tolist() == sum(pieces, [])
        assert corpus.starts.tolist() == np.cumsum([0] + [len(p) for p in pieces]).tolist()
    with pytest.raises(CorpusError, match="no column 'text'"):
        tokenize_corpus(tmp_path / "ds", tokenizer)
    with pytest.raises(CorpusError, match=r"--corpus-split \(have \['validation'\]\)|choose a split"):
        tokenize_corpus(tmp_path / "ds", tokenizer, text_field="body", split="train")
    limited = tokenize_corpus(tmp_path / "docs.jsonl", tokenizer, text_field="body", max_tokens=len(pieces[0]) + 3)
    assert limited.ids.tolist() == pieces[0] + pieces[1][:3]


def test_a_corpus_without_text_is_refused(tokenizer, tmp_path):
    """Empty or whitespace-only documents in every text format: refused naming the file (a
    sample of them would repeat one whitespace token), while one word among them is enough."""
    import datasets

    (tmp_path / "blank.txt").write_text(" \n\n\t \n" * 50)
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ("", "  ", "\n\n")))
    datasets.Dataset.from_dict({"text": ["", " \t"]}).save_to_disk(str(tmp_path / "blank-ds"))
    for name in ("blank.txt", "empty.txt", "blank.jsonl", "blank-ds"):
        with pytest.raises(CorpusError, match=f"--corpus .*{name}: holds no text, only empty or whitespace lines"):
            tokenize_corpus(tmp_path / name, tokenizer)
    (tmp_path / "one-word.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in ("", "  ", "river")))
    assert tokenize_corpus(tmp_path / "one-word.jsonl", tokenizer).n_tokens > 0


def _corpus(docs=(50, 3, 120, 27)):
    ids = np.arange(1000, 1000 + sum(docs), dtype=np.int32)
    return TokenizedCorpus("test", "npy", ids, np.cumsum([0, *docs]))


def test_concat_windows_are_seeded_slices_of_the_concatenation():
    corpus = _corpus()
    tokens, mask = sample_windows(corpus, 7, 9, seed=3)
    assert tokens.shape == mask.shape == (7, 9) and tokens.dtype == np.int32 and mask.all()
    starts = tokens[:, 0] - 1000
    np.testing.assert_array_equal(tokens, 1000 + starts[:, None] + np.arange(9))  # contiguous, across documents
    expected = np.random.default_rng(3).integers(0, corpus.n_tokens - 9 + 1, size=7)
    np.testing.assert_array_equal(starts, expected)  # the documented draw: uniform starts, with replacement
    again, _ = sample_windows(corpus, 7, 9, seed=3)
    other, _ = sample_windows(corpus, 7, 9, seed=4)
    np.testing.assert_array_equal(tokens, again)
    assert not np.array_equal(tokens, other)


def test_prepend_bos():
    tokens, mask = sample_windows(_corpus(), 4, 6, seed=0, prepend_bos=True, bos_id=7)
    assert (tokens[:, 0] == 7).all() and mask.all()
    np.testing.assert_array_equal(np.diff(tokens[:, 1:], axis=1), 1)
    with pytest.raises(CorpusError, match="--bos-id"):
        sample_windows(_corpus(), 4, 6, seed=0, prepend_bos=True)


def test_document_windows_stay_inside_documents_and_pad_on_the_right():
    corpus = _corpus(docs=(50, 3, 120, 27, 1000))
    tokens, mask = sample_windows(corpus, 40, 30, seed=1, windows="document")
    lengths = mask.sum(1)
    assert set(lengths.tolist()) <= {3, 27, 30} and (lengths < 30).any()
    assert (np.diff(mask.astype(int), axis=1) <= 0).all()  # right padding
    assert (tokens[~mask] == 0).all()
    doc_of = np.searchsorted(corpus.starts, tokens - 1000, side="right") - 1
    for row, valid in zip(doc_of, mask):
        assert len(set(row[valid].tolist())) == 1  # one document per window


def test_too_small_a_corpus_is_an_error_not_a_smaller_sample():
    corpus = _corpus()
    with pytest.raises(
        CorpusError, match=r"200 tokens, but a sample of 21 windows of 10 corpus tokens needs at least 210"
    ):
        sample_windows(corpus, 21, 10, seed=0)
    tokens, _ = sample_windows(corpus, 20, 10, seed=0)
    assert tokens.shape == (20, 10)


def test_token_sample_files_round_trip_with_minus_one_padding(tmp_path):
    tokens = np.asarray([[5, 6, 7], [8, 9, 0]], np.int32)
    mask = np.asarray([[True, True, True], [True, True, False]])
    save_token_sample(tmp_path / "s.npy", tokens, mask)
    assert np.load(tmp_path / "s.npy").tolist() == [[5, 6, 7], [8, 9, -1]]
    got_tokens, got_mask = load_token_sample(tmp_path / "s.npy", vocab_size=10)
    np.testing.assert_array_equal(got_tokens, tokens)
    np.testing.assert_array_equal(got_mask, mask)
    with pytest.raises(CorpusError, match=r"token ids must lie in \[0, 9\)"):
        load_token_sample(tmp_path / "s.npy", vocab_size=9)
    np.save(tmp_path / "f.npy", np.ones((2, 3), np.float32))
    with pytest.raises(CorpusError, match="must be integers"):
        load_token_sample(tmp_path / "f.npy")


LOGIT_LENSES = ("--lenses", "logit_lens_value,logit_lens_key", "--no-self-check")


def test_cli_reads_a_text_corpus_a_token_sample_and_a_jsonl_corpus(world, tmp_path):
    """Logit Lens does not depend on the sample (its key readout is the uncentred embedding):
    runs on different samples give the same rows, while each sample comes from its source."""
    from_text = tmp_path / "from-text"
    assert main(base_args(world, from_text, *LOGIT_LENSES)) == 0
    expected = pq.read_table(from_text / "signatures.parquet")
    tokenizer = converters.load_tokenizer(world.model)
    tokens, _ = sample_windows(tokenize_corpus(world.corpus_text, tokenizer), 6, 10, seed=0)
    np.testing.assert_array_equal(np.load(from_text / "sample.npy"), tokens)

    from_sample = tmp_path / "from-sample"
    args = drop(base_args(world, from_sample, *LOGIT_LENSES), "--corpus", "--num-samples", "--max-length")
    assert main(args + ["--token-sample", str(from_text / "sample.npy")]) == 0
    assert pq.read_table(from_sample / "signatures.parquet").equals(expected)
    np.testing.assert_array_equal(np.load(from_sample / "sample.npy"), tokens)
    assert (
        json.loads((from_sample / "run.json").read_text())["fingerprint_inputs"]["sample"]
        == json.loads((from_text / "run.json").read_text())["fingerprint_inputs"]["sample"]
    )

    from_jsonl = tmp_path / "from-jsonl"
    args = base_args(world, from_jsonl, *LOGIT_LENSES, "--seed", "5", "--prepend-bos", "--bos-id", "0")
    args[args.index("--corpus") + 1] = str(world.corpus_jsonl)
    assert main(args) == 0
    assert pq.read_table(from_jsonl / "signatures.parquet").equals(expected)
    tokens, _ = sample_windows(
        tokenize_corpus(world.corpus_jsonl, tokenizer), 6, 10, seed=5, prepend_bos=True, bos_id=0
    )
    np.testing.assert_array_equal(np.load(from_jsonl / "sample.npy"), tokens)
    sample = json.loads((from_jsonl / "run.json").read_text())["inputs"]["sample"]
    assert (sample["format"], sample["documents"], sample["seed"], sample["prepend_bos"]) == ("jsonl", 40, 5, True)


def test_a_corpus_in_another_encoding_runs_with_corpus_encoding(world, tmp_path):
    """16 KB of the bytes 0..255 is no UTF-8 (exit code 2, see test_cli_errors) but is latin-1:
    read so, it gives the sample of its decoded text, and run.json records the encoding."""
    corpus = tmp_path / "bytes.txt"
    corpus.write_bytes(bytes(range(256)) * 64)
    out = tmp_path / "latin-1"
    args = base_args(world, out, *LOGIT_LENSES, "--corpus-encoding", "latin-1")
    args[args.index("--corpus") + 1] = str(corpus)
    assert main(args) == 0
    tokenizer = converters.load_tokenizer(world.model)
    as_text = tmp_path / "as-text.txt"
    as_text.write_text(corpus.read_bytes().decode("latin-1"), encoding="utf-8", newline="")
    tokens, _ = sample_windows(tokenize_corpus(as_text, tokenizer), 6, 10, seed=0)
    np.testing.assert_array_equal(np.load(out / "sample.npy"), tokens)
    run = json.loads((out / "run.json").read_text())
    assert run["options"]["corpus_encoding"] == "latin-1" and run["inputs"]["sample"]["encoding"] == "latin-1"
