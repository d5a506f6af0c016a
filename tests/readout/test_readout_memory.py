"""The readout's memory does not grow with the dictionary: it reads dictionary rows a chunk at a
time, keeps at most two chunks in flight, and (in the benchmarks) the synthetic dictionary is
built in place, with the same numbers as one draw per matrix."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import builders
from lens.kernel_fixtures import setup
from qlens_jax.readout import FeatureRows, ReadoutContext, centered_embeddings, context as readout_context
from qlens_jax.readout.streaming import ResultRows

CHUNK = 8


class _WatchedMatrix:
    """A host matrix that records the most feature rows any one read took from it."""

    def __init__(self, matrix: np.ndarray, row_length: int):
        self.matrix, self.row_length, self.widest = matrix, row_length, 0

    def __getitem__(self, key):
        block = self.matrix[np.asarray(key) if isinstance(key, jax.Array) else key]
        self.widest = max(self.widest, block.size // self.row_length)
        return block


@pytest.fixture(scope="module")
def gpt2():
    _, model, dictionaries, tokens, mask = setup("gpt2")
    context = ReadoutContext(model, centered_embeddings(model, jnp.asarray(tokens), jnp.asarray(mask)), False, 5, CHUNK)
    return model, dictionaries[0], context


@pytest.fixture
def in_flight(monkeypatch):
    """The most chunks dispatched to the readout and not yet fetched, over one run."""
    counts = {"dispatched": 0, "fetched": 0, "most": 0}
    readout, append = readout_context.readout_chunks, ResultRows.append

    def dispatch(*args, **kwargs):
        counts["dispatched"] += 1
        counts["most"] = max(counts["most"], counts["dispatched"] - counts["fetched"])
        return readout(*args, **kwargs)

    def fetch(self, *args):
        counts["fetched"] += 1
        return append(self, *args)

    monkeypatch.setattr(readout_context, "readout_chunks", dispatch)
    monkeypatch.setattr(ResultRows, "append", fetch)
    return counts


@pytest.mark.parametrize("side", ["value", "key"])
@pytest.mark.parametrize(
    "features", [np.arange(40), np.array([39, 3, 17, 5, 0, 22, 8, 31, 12, 9, 2])], ids=["all", "picked"]
)
def test_readout_reads_chunk_sized_slices_of_the_dictionary(gpt2, in_flight, side, features):
    model, dictionary, context = gpt2
    d = model.config.d_model
    weights = np.asarray(dictionary.W_dec if side == "value" else dictionary.W_enc)
    watched = _WatchedMatrix(weights, d)
    op = jax.random.normal(jax.random.key(0), (d, d)) / np.sqrt(d)

    result = context.read(side, FeatureRows(watched, side == "key", features), op=op)

    assert 0 < watched.widest <= CHUNK
    assert in_flight["most"] <= 2 and in_flight["fetched"] == -(-len(features) // CHUNK)
    vectors = weights[features] if side == "value" else weights[:, features].T
    expected = context.read(side, vectors, op=op)
    for field, values in expected.items():
        assert result[field].shape == (len(features), 5)
        np.testing.assert_array_equal(result[field], values)


def _one_draw_per_matrix(d_model, n_features, layer, seed):
    rng = np.random.default_rng([seed, layer, n_features])
    W_dec = rng.standard_normal((n_features, d_model), dtype=np.float32)
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    W_enc = rng.standard_normal((d_model, n_features), dtype=np.float32) * np.float32(1.0 / np.sqrt(d_model))
    return W_enc, W_dec


def test_synthetic_dictionary_is_built_in_blocks_with_one_draws_numbers(monkeypatch):
    monkeypatch.setattr(builders, "WEIGHT_BLOCK_BYTES", 4 * 24 * 7)  # 7 decoder rows, 1 encoder row a block
    W_enc, W_dec = _one_draw_per_matrix(24, 101, 3, 5)
    dictionary = builders.synthetic_dictionary(24, 101, 3, 5)
    for built in (builders.dictionary_arrays(24, 101, 3, 5), (dictionary.W_enc, dictionary.W_dec)):
        np.testing.assert_array_equal(np.asarray(built[0]), W_enc)
        np.testing.assert_array_equal(np.asarray(built[1]), W_dec)
