"""The reverse lookup on a run whose dictionaries sit on module outputs (`attn_out`, `z`,
`mlp_out`) beside a residual SAE, on a tiny Gemma-3 whose `z` is wider than `d_model`: every
side of every dictionary equals the columns of the full score matrix (the kernel's readout with
k = the whole vocabulary, on the run's operators and on the per-feature path)."""

import json

import numpy as np
import pytest

import converters
import qlens_jax
from qlens_jax.corpus import load_token_sample
from qlens_jax.lens import load_operators
from qlens_jax.serve import ReverseLookup
from world import shared_module_run, shared_module_world


@pytest.fixture(scope="module")
def module_world(tmp_path_factory):
    return shared_module_world(tmp_path_factory)


@pytest.fixture(scope="module")
def module_run(module_world, tmp_path_factory):
    return shared_module_run(tmp_path_factory, module_world)[0]


@pytest.fixture(scope="module")
def lookup(module_run):
    return ReverseLookup(module_run)


def _full_scores(world, run_dir, path: str) -> dict:
    """{(side, dictionary index): [features, vocab]} exact Query Lens scores of every token."""
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
def full_scores(module_world, module_run):
    return {path: _full_scores(module_world, module_run, path) for path in ("dense", "per-feature")}


@pytest.mark.parametrize("side", ["value", "key"])
def test_module_output_scores_are_the_columns_of_the_full_score_matrix(lookup, full_scores, module_world, side):
    sites = [e.site_in for e in lookup.run.dictionaries]
    assert sites == ["resid_post", "attn_out", "z", "mlp_out"]
    z = lookup.run.dictionaries[2]
    assert lookup.rows(z).key.shape == lookup.rows(z).value.shape == (40, module_world.d_z)  # rows of the heads' width
    for token in (0, 17, 259, lookup.model.config.vocab_size - 1):
        for entry in lookup.run.dictionaries:
            reverse = lookup.scores(entry, side, token)
            dense = full_scores["dense"][(side, entry.index)]
            scale = np.abs(dense).max()
            np.testing.assert_allclose(
                reverse, dense[:, token], rtol=0, atol=1e-6 * scale, err_msg=f"{entry.name} {side}"
            )
            per_feature = full_scores["per-feature"][(side, entry.index)][:, token]
            np.testing.assert_allclose(reverse, per_feature, rtol=0, atol=1e-4 * scale, err_msg=f"{entry.name} {side}")


def test_ranking_mixes_module_output_and_residual_features(lookup, full_scores):
    """`lookup` ranks the features of all four dictionaries together, by the same exact scores."""
    token, dense = 17, full_scores["dense"]
    for side in ("value", "key"):
        column = [
            (float(dense[(side, e.index)][f, token]), e.index, f)
            for e in lookup.run.dictionaries
            for f in range(e.d_sae)
        ]
        column.sort(key=lambda c: (-c[0], c[1], c[2]))
        result = lookup.lookup(token, side, top=30)
        assert [(h["dictionary_index"], h["feature"]) for h in result["hits"]] == [(d, f) for _, d, f in column[:30]]
        assert result["features_scored"] == 160


@pytest.mark.parametrize("option, side", [("--promotes", "value"), ("--activated-by", "key")])
def test_search_command_on_a_z_dictionary(module_run, full_scores, capsys, option, side):
    from qlens_jax.cli import main

    assert main(["search", str(module_run), option, "id:17", "--dictionary", "z-40", "--top", "5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    column = full_scores["dense"][(side, 2)][:, 17]
    assert [h["feature"] for h in result["hits"]] == np.argsort(-column, kind="stable")[:5].tolist()
    assert {(h["dictionary"], h["layer"]) for h in result["hits"]} == {("z-40", 2)}
