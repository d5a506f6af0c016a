"""`load_tokenizer` reads tokenizer.json and GPT-2 style vocab/merges, and gives display strings."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import converters
from converters import ConversionError
from qlens_jax.tokens import token_strings

TEXT = ["the quick brown fox jumps over the lazy dog", "a dog and a fox", "over and over again"] * 20


@pytest.fixture(scope="module")
def trained():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(
        TEXT, trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    )
    return tokenizer


def test_tokenizer_json_round_trip(trained, tmp_path):
    trained.save(str(tmp_path / "tokenizer.json"))
    loaded = converters.load_tokenizer(tmp_path)
    ids = loaded.encode("the lazy fox").ids
    assert ids == trained.encode("the lazy fox").ids
    strings = token_strings(loaded)
    assert len(strings) == loaded.get_vocab_size()
    assert "".join(strings[i] for i in ids) == "the lazy fox"


def test_vocab_and_merges(trained, tmp_path):
    trained.model.save(str(tmp_path))  # writes vocab.json and merges.txt
    loaded = converters.load_tokenizer(tmp_path)
    assert loaded.encode("over and over").ids == trained.encode("over and over").ids


def test_transformers_tokenizer_object(trained):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=trained)
    assert converters.load_tokenizer(fast).encode("a dog").ids == trained.encode("a dog").ids


def test_missing_tokenizer(tmp_path):
    with pytest.raises(ConversionError, match="no tokenizer"):
        converters.load_tokenizer(tmp_path)
