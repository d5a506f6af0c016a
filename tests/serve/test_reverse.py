"""The reverse lookup against the full score matrix computed the slow way: the kernel's own
readout (`query_lens` with k = the whole vocabulary, on the run's operators and sample, and on
the independent per-feature path), column by column."""

import numpy as np
import pyarrow.parquet as pq
import pytest

import converters
import qlens_jax
from qlens_jax.corpus import load_token_sample
from qlens_jax.errors import InputError
from qlens_jax.lens import load_operators
from qlens_jax.serve import ReverseLookup, reverse_lookup
from qlens_jax.serve.rundata import RunData


@pytest.fixture(scope="module")
def lookup(serve_run):
    return ReverseLookup(serve_run[0])


def _full_scores(world, run_dir, path: str) -> dict:
    """{(side, dictionary index): [features, vocab]} exact scores of every token for every feature."""
    tokens, mask = load_token_sample(run_dir / "sample.npy")
    model = converters.load_model(world.model)
    dictionaries = converters.load_dictionaries([str(d) for d in world.dictionaries], model)
    operators = load_operators(run_dir / "operators") if path == "dense" else None
    vocab = model.config.vocab_size
    signatures = qlens_jax.query_lens(
        model,
        dictionaries,
        tokens,
        mask,
        lenses=("query_lens_value", "query_lens_key"),
        k=vocab,
        path=path,
        operators=operators,
        self_check=False,
        memory_budget_gb=1.0,
    )
    full = {}
    for index, table in enumerate(signatures):
        scores = np.empty((len(table.feature_ids), vocab), np.float32)
        np.put_along_axis(scores, np.asarray(table.top_ids), np.asarray(table.top_scores), axis=1)
        full[(table.lens.rsplit("_", 1)[1], index % len(dictionaries))] = scores
    return full


@pytest.fixture(scope="module")
def dense_scores(world, serve_run):
    return _full_scores(world, serve_run[0], "dense")


@pytest.fixture(scope="module")
def per_feature_scores(world, serve_run):
    return _full_scores(world, serve_run[0], "per-feature")


@pytest.mark.parametrize("side", ["value", "key"])
def test_scores_are_the_columns_of_the_full_score_matrix(lookup, dense_scores, per_feature_scores, side):
    run = lookup.run
    for token in (0, 17, 259, lookup.model.config.vocab_size - 1):
        for entry in run.dictionaries:
            reverse = lookup.scores(entry, side, token)
            dense = dense_scores[(side, entry.index)][:, token]
            scale = np.abs(dense_scores[(side, entry.index)]).max()
            np.testing.assert_allclose(reverse, dense, rtol=0, atol=1e-6 * scale)
            # the per-feature path transports each feature on its own (no operators): docs/definitions.md's 1e-4
            np.testing.assert_allclose(
                reverse, per_feature_scores[(side, entry.index)][:, token], rtol=0, atol=1e-4 * scale
            )


@pytest.mark.parametrize("side", ["value", "key"])
def test_ranking_over_all_dictionaries_is_the_sorted_column(lookup, dense_scores, side):
    token = 259
    column = [
        (float(dense_scores[(side, e.index)][f, token]), e.index, f)
        for e in lookup.run.dictionaries
        for f in range(e.d_sae)
    ]
    column.sort(key=lambda c: (-c[0], c[1], c[2]))
    result = lookup.lookup(token, side, top=20)
    hits = [(h["dictionary_index"], h["feature"]) for h in result["hits"]]
    assert hits == [(d, f) for _, d, f in column[:20]]
    assert [h["rank"] for h in result["hits"]] == list(range(1, 21))
    np.testing.assert_allclose([h["score"] for h in result["hits"]], [s for s, _, _ in column[:20]], rtol=1e-6)
    assert result["features_scored"] == 120


def test_a_feature_without_the_token_in_its_stored_top_25_can_rank_first(lookup, dense_scores, serve_run):
    """Find a token whose best-scoring feature (by the full matrix) does not list it in its
    stored top-25: the reverse lookup ranks that feature first all the same."""
    stored = {
        (r["dictionary_index"], r["feature"]): r["top_ids"]
        for r in pq.read_table(serve_run[0] / "signatures.parquet").to_pylist()
        if r["lens"] == "query_lens_value"
    }
    assert all(len(ids) == 25 for ids in stored.values())
    vocab = lookup.model.config.vocab_size
    cases = []
    for token in range(vocab):
        best = max(
            (
                (float(dense_scores[("value", e.index)][f, token]), e.index, f)
                for e in lookup.run.dictionaries
                for f in range(e.d_sae)
            ),
            key=lambda c: (c[0], -c[1], -c[2]),
        )
        if token not in stored[(best[1], best[2])]:
            cases.append((token, best))
    assert cases, "the world has no such token; the test needs one"
    token, (score, index, feature) = cases[0]
    (first, *_) = reverse_lookup(serve_run[0], token, "value", top=3)
    assert (first.dictionary_index, first.feature) == (index, feature) and first.rank == 1
    assert first.score == pytest.approx(score, rel=1e-6)
    assert token not in stored[(index, feature)]


def test_one_dictionary_and_token_strings(lookup):
    entry = lookup.run.dictionaries[2]
    by_name = lookup.lookup(" the", "key", dictionary=f"{entry.name}/{entry.layer}", top=5)
    assert {h["dictionary_index"] for h in by_name["hits"]} == {2} and by_name["features_scored"] == entry.d_sae
    assert by_name["token_id"] == lookup.tokenizer.encode(" the", add_special_tokens=False).ids[0]
    assert (
        lookup.lookup("id:259", "key", dictionary="2", top=5)["hits"]
        == lookup.lookup(259, "key", dictionary="2", top=5)["hits"]
    )


def test_a_string_that_is_not_one_token_shows_the_split(lookup):
    with pytest.raises(
        InputError,
        match=r"--promotes ' the river' is \d+ tokens, not one: the tokenizer splits it into ' the' \(id \d+\)",
    ):
        lookup.lookup(" the river", "value")
    with pytest.raises(InputError, match="empty token"):
        lookup.lookup("", "value")
    with pytest.raises(InputError, match="not a dictionary of this run"):
        lookup.lookup(" the", "value", dictionary="nope")
    with pytest.raises(InputError, match="--top 0"):
        lookup.lookup(" the", "value", top=0)
    with pytest.raises(InputError, match="vocabulary has"):
        lookup.lookup("id:999999", "value")


def test_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(InputError, match="not a qlens run folder"):
        RunData(tmp_path)
    with pytest.raises(InputError, match="no such directory"):
        RunData(tmp_path / "missing")
