"""The shortened per-feature transports (`partial_transport`) against the full-model ones
(`per_feature`), and the "auto" path that relies on them."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import converters
import qlens_jax
from kernel_fixtures import random_dictionary
from qlens_jax.lens import partial_transport, per_feature, points as pts
from qlens_jax.lens.points import Point
from tiny_models import build_hf_model, padded_batch

TANGENT_CHUNK = 2


@pytest.fixture(scope="module")
def gpt2():
    model = converters.load_model(build_hf_model("gpt2"))
    tokens, mask = padded_batch(model.config.vocab_size, batch=3, seq=9)
    vectors = np.random.default_rng(0).normal(size=(3, model.config.d_model)).astype(np.float32)
    return model, jnp.asarray(tokens), jnp.asarray(mask), jnp.asarray(vectors)


def _assert_same_sums(full, short):
    for a, b in zip(full, short):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=2e-5, atol=2e-5 * float(jnp.abs(a).max()))


# resid_mid inside a block, resid_pre after one, and the final residual (nothing downstream)
@pytest.mark.parametrize("point", [Point("resid_mid", 1), Point("resid_pre", 2), Point("resid_post", 2)])
def test_value_side_matches_full_model(gpt2, point):
    model, tokens, mask, vectors = gpt2
    rows = jnp.full(len(vectors), pts.row(point, model.config.n_layers))
    full = per_feature.value_chunk(model, tokens, mask, vectors, rows, TANGENT_CHUNK)
    _assert_same_sums(full, partial_transport.chunk_sums(model, tokens, mask, vectors, "value", point, TANGENT_CHUNK))


@pytest.mark.parametrize(
    "point",
    [Point("resid_mid", 0), Point("mlp_in", 1), Point("resid_pre", 2, "layer_norm"), Point("resid_post", 2)],
)
def test_key_side_matches_full_model(gpt2, point):
    model, tokens, mask, vectors = gpt2
    n_layers = model.config.n_layers
    rows = jnp.full(len(vectors), pts.row(point, n_layers))
    with_norms = pts.row(point, n_layers) >= pts.n_key_points(n_layers)
    full = per_feature.key_chunk(model, tokens, mask, vectors, rows, TANGENT_CHUNK, with_norms)
    _assert_same_sums(full, partial_transport.chunk_sums(model, tokens, mask, vectors, "key", point, TANGENT_CHUNK))


def test_covers_only_what_it_shortens():
    assert partial_transport.covers(Point("resid_mid", 1), "value", 3, parallel=False)
    assert partial_transport.covers(Point("resid_pre", 1, "layer_norm"), "key", 3, parallel=False)
    assert not partial_transport.covers(Point("resid_pre", 1, "layer_norm"), "value", 3, parallel=False)
    assert not partial_transport.covers(Point("z", 1), "value", 3, parallel=False)
    # a parallel block has no residual between its modules
    assert not partial_transport.covers(Point("mlp_in", 1), "key", 3, parallel=True)
    assert partial_transport.covers(Point("resid_pre", 1), "key", 3, parallel=True)


def _gpt2_small_config():
    import transformers

    from converters.hf_config import model_config_from_hf

    return model_config_from_hf(transformers.GPT2Config().to_dict())


def _resid_post_points(layer: int, n_layers: int):
    return pts.dictionary_points("resid_post", "resid_post", layer, n_layers)


def test_auto_cost_of_the_papers_job():
    """GPT-2 small's shape: 100 features at every layer go per-feature, whole dictionaries dense,
    a value-only request at the last layer needs no transport at all."""
    from qlens_jax.lens import auto

    config = _gpt2_small_config()
    assert (config.n_layers, config.d_model) == (12, 768)
    both = [("value", False), ("key", False)]
    every_layer = lambda n: [(n, _resid_post_points(layer, 12)) for layer in range(12)]
    per_feature_passes, dense_passes = auto.transport_passes(every_layer(100), both, config)
    assert auto.path("auto", per_feature_passes, dense_passes) == "per-feature"
    assert auto.path("auto", *auto.transport_passes(every_layer(32768), both, config)) == "dense"
    last_value = auto.transport_passes([(100, _resid_post_points(11, 12))], [("value", False)], config)
    assert last_value[0] == 0 and auto.path("auto", *last_value) == "per-feature"
    # one layer, one side, at full depth: the old rule (dense from d_model features)
    first_value = [(767, _resid_post_points(0, 12))], [("value", False)]
    assert auto.path("auto", *auto.transport_passes(*first_value, config)) == "per-feature"
    first_value = [(768, _resid_post_points(0, 12))], [("value", False)]
    assert auto.path("auto", *auto.transport_passes(*first_value, config)) == "dense"


def test_shortened_per_feature_path_matches_dense(gpt2):
    """`query_lens` at the last layer: "auto" takes the per-feature path (whose value side is
    the readout alone) and gives the dense path's lists."""
    model, tokens, mask, _ = gpt2
    c = model.config
    dictionary = random_dictionary(c.d_model, c.n_layers - 1, "resid_post", "resid_post", "sae", 3, n=8)
    features = [1, 5]
    lenses = ("query_lens_value", "query_lens_key")
    args = (model, dictionary, np.asarray(tokens), np.asarray(mask))
    plan = qlens_jax.plan_request(*args, lenses=lenses, features=features)
    assert plan.path == "per-feature"
    auto_tables = qlens_jax.query_lens(*args, lenses=lenses, features=features, k=5)
    dense_tables = qlens_jax.query_lens(*args, lenses=lenses, features=features, k=5, path="dense", self_check=False)
    for a, b in zip(auto_tables, dense_tables):
        np.testing.assert_array_equal(a.top_ids, b.top_ids)
        np.testing.assert_allclose(a.top_scores, b.top_scores, rtol=1e-4, atol=1e-5)
