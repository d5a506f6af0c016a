"""`--windows paper`: the authors' token sample (TransformerLens's `tokenize_and_concatenate`,
last 1,000 rows held out, rows drawn by torch's seeded generator), checked against
TransformerLens, `datasets` and torch themselves on a small corpus."""

import json

import numpy as np
import pytest

import converters
from qlens_jax import default
from qlens_jax.corpus import CorpusError, tokenize_corpus
from qlens_jax.job.inputs import draw_sample, eos_and_pad_ids
from qlens_jax.job.spec import SampleSpec
from qlens_jax.paper_sample import HELD_OUT_ROWS, draw_rows, paper_sample, transformer_lens_rows
from world import corpus_documents

MAX_LENGTH = 8


@pytest.fixture(scope="module")
def documents():
    # 4,400 short documents: four shards of 1,100, so every shard has a full batch of 1,000
    # documents and a short one, and each batch drops a remainder.
    return [" ".join(doc.split()[: 6 + i % 9]) for i, doc in enumerate(corpus_documents(4400, 16, seed=3))]


@pytest.fixture(scope="module")
def corpus_file(documents, tmp_path_factory):
    path = tmp_path_factory.mktemp("paper") / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    return path


@pytest.fixture(scope="module")
def corpus(corpus_file):
    return tokenize_corpus(corpus_file, converters.load_tokenizer(default.model_dir()))


def _transformer_lens_rows(documents, num_proc):
    import datasets
    import transformers
    from transformer_lens.utils import tokenize_and_concatenate

    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(default.model_dir())
    dataset = datasets.Dataset.from_dict({"text": documents})
    rows = tokenize_and_concatenate(
        dataset, hf_tokenizer, max_length=MAX_LENGTH, add_bos_token=False, num_proc=num_proc
    )
    return np.asarray(rows["tokens"]), hf_tokenizer


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # datasets forks worker processes beside JAX's threads
def test_rows_equal_transformer_lens_with_the_authors_four_processes(documents, corpus):
    expected, hf_tokenizer = _transformer_lens_rows(documents, num_proc=4)
    eos, pad = eos_and_pad_ids(converters.load_tokenizer(default.model_dir()), default.model_dir())
    assert eos == hf_tokenizer.eos_token_id and pad is None
    rows = transformer_lens_rows(corpus, MAX_LENGTH, eos, pad)
    assert rows.shape == expected.shape and rows.shape[0] > HELD_OUT_ROWS
    np.testing.assert_array_equal(rows, expected)
    # One process gives other batch boundaries, hence other rows: the shard count matters.
    assert transformer_lens_rows(corpus, MAX_LENGTH, eos, pad, shards=1).shape != rows.shape


def test_a_batch_shorter_than_a_row_is_one_row_padded_with_eos(tmp_path):
    documents = ["the river", "city"]
    expected, hf_tokenizer = _transformer_lens_rows(documents, num_proc=None)
    path = tmp_path / "short.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    corpus = tokenize_corpus(path, converters.load_tokenizer(default.model_dir()))
    rows = transformer_lens_rows(corpus, MAX_LENGTH, hf_tokenizer.eos_token_id, None, shards=1)
    np.testing.assert_array_equal(rows, expected)
    assert rows.shape == (1, MAX_LENGTH) and rows[0, -1] == hf_tokenizer.eos_token_id


@pytest.mark.parametrize("n_rows", [7, 1_234, 3_000_017])
def test_row_draws_equal_torch_randint(n_rows):
    import torch

    for seed in (0, 42):
        generator = torch.Generator().manual_seed(seed)
        expected = torch.randint(0, n_rows, (500,), generator=generator).numpy()
        np.testing.assert_array_equal(draw_rows(n_rows, 500, seed), expected)


def test_draw_sample_gives_the_authors_load_pile_sample(documents, corpus_file, corpus):
    import torch

    expected_rows, hf_tokenizer = _transformer_lens_rows(documents, num_proc=None)  # shards=1 below
    tokens, mask = paper_sample(corpus, 64, MAX_LENGTH, 42, hf_tokenizer.eos_token_id, shards=1)
    kept = expected_rows[:-HELD_OUT_ROWS]
    indices = torch.randint(0, len(kept), (64,), generator=torch.Generator().manual_seed(42)).numpy()
    np.testing.assert_array_equal(tokens, kept[indices])
    assert mask.all()

    model = converters.load_model(default.model_dir())
    tokenizer = converters.load_tokenizer(default.model_dir())
    spec = SampleSpec(corpus=str(corpus_file), num_samples=64, max_length=MAX_LENGTH, seed=42, windows="paper")
    drawn, drawn_mask, description = draw_sample(spec, tokenizer, model, default.model_dir(), quiet=True)[:3]
    eos, pad = eos_and_pad_ids(tokenizer, default.model_dir())
    np.testing.assert_array_equal(drawn, paper_sample(corpus, 64, MAX_LENGTH, 42, eos, pad)[0])
    assert drawn_mask.all() and description["windows"] == "paper"


def test_refusals(corpus, tmp_path):
    with pytest.raises(CorpusError, match="holds out the last 1000"):
        paper_sample(corpus, 4, 64, 42, eos_id=0)
    with pytest.raises(CorpusError, match="names no EOS"):
        paper_sample(corpus, 4, MAX_LENGTH, 42, eos_id=None)
    ids = tmp_path / "ids.npy"
    np.save(ids, np.arange(50_000, dtype=np.int32) % 100)
    with pytest.raises(CorpusError, match="without document boundaries"):
        transformer_lens_rows(tokenize_corpus(ids, None), MAX_LENGTH, eos_id=0)
    with pytest.raises(CorpusError, match="--seed -1"):
        draw_rows(10, 3, -1)
