"""Cross-layer transcoders (docs/definitions.md section 1c) on a tiny GPT-2 (three layers;
compiling the dense sweeps of a Gemma-2 takes twice as long, and nothing here depends on the
family), loaded from files in circuit-tracer's layout: the dense and
per-feature paths agree with each other and with the per-feature PyTorch reference, which
transports each decoder vector from its own write layer and sums; the key side is the
encoder's; the value side really is the sum over write layers (not the own layer's)."""

import numpy as np
import pytest

import converters
import qlens_jax
from benchmarks import reference_torch as ref
from clt_files import write_clt_folder
from kernel_fixtures import FEATURES
from qlens_jax.dictionaries import CrossLayerTranscoder
from qlens_jax.lens.validation import LensRequestError
from tiny_models import build_hf_model, padded_batch

RTOL = 1e-4
K = 8
VALUE_LENSES = ("query_lens_value", "first_order_value", "logit_lens_value")
KEY_LENSES = ("query_lens_key", "first_order_key", "logit_lens_key")
LAYERS = (0, 1)  # the first layer writes into all three, the second into two


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
    hf = build_hf_model("gpt2", seed=3)
    model = converters.load_model(hf)
    tokens, mask = padded_batch(model.config.vocab_size, batch=4, seq=11, seed=3)
    folder = write_clt_folder(tmp_path_factory.mktemp("clt"), model.config.n_layers, model.config.d_model, 40)
    whole = converters.load_dictionaries(folder, model)
    dictionaries = [d for d in whole if d.layer in LAYERS]
    common = dict(features=FEATURES, k=K, sequences_per_chunk=2, lenses=VALUE_LENSES + KEY_LENSES)
    runs = {
        path: qlens_jax.query_lens(model, dictionaries, tokens, mask, path=path, **common)
        for path in ("dense", "per-feature")
    }
    return hf, model, folder, dictionaries, tokens, mask, runs


def _table(signatures, lens: str, layer: int):
    return next(t for t in signatures if t.lens == lens and t.layer == layer)


def _assert_matches(table, scores):
    top_ids, _, bottom_ids, _ = ref.topk_with_scores(scores, K)
    scale = np.abs(scores).max(axis=1, keepdims=True)
    np.testing.assert_array_equal(table.top_ids, top_ids)
    np.testing.assert_array_equal(table.bottom_ids, bottom_ids)
    np.testing.assert_allclose(table.top_scores / scale, np.take_along_axis(scores, top_ids, 1) / scale, atol=RTOL)


def test_loaded_whole(computed):
    _, model, folder, dictionaries, *_ = computed
    assert all(isinstance(d, CrossLayerTranscoder) for d in dictionaries)
    assert [d.write_layers for d in dictionaries] == [(0, 1, 2), (1, 2)]
    assert {d.name for d in dictionaries} == {"clt-40"}


@pytest.mark.parametrize("lens", VALUE_LENSES)
def test_value_side_matches_reference(computed, lens):
    hf, _, _, dictionaries, tokens, mask, runs = computed
    for d in dictionaries:
        decoders = np.asarray(d.cross_layer_decoders())[FEATURES]
        scores = ref.cross_layer_reference_scores(hf, tokens, mask, lens, decoders, d.layer)
        for path in ("dense", "per-feature"):
            _assert_matches(_table(runs[path], lens, d.layer), scores)


@pytest.mark.parametrize("lens", KEY_LENSES)
def test_key_side_is_the_encoders(computed, lens):
    hf, _, _, dictionaries, tokens, mask, runs = computed
    for d in dictionaries:
        keys = np.asarray(d.key_vectors())[FEATURES]
        scores = ref.reference_scores(hf, tokens, mask, lens, keys, None, d.layer, kind="transcoder")
        for path in ("dense", "per-feature"):
            _assert_matches(_table(runs[path], lens, d.layer), scores)


def test_first_order_blocks_agree(computed):
    *_, dictionaries, _, _, runs = computed
    for d in dictionaries:
        dense, per_feature = (_table(runs[p], "first_order_value", d.layer) for p in ("dense", "per-feature"))
        np.testing.assert_array_equal(dense.layer_indices, [d.layer, *range(d.layer + 1, 3)])
        np.testing.assert_array_equal(dense.layer_indices, per_feature.layer_indices)
        np.testing.assert_array_equal(dense.layer_top_ids, per_feature.layer_top_ids)
        np.testing.assert_allclose(dense.layer_energy, per_feature.layer_energy, atol=1e-4)


def test_value_is_not_the_own_layers(computed):
    """Loaded per layer, the same files give another query_lens_value: the later writes count."""
    _, model, folder, dictionaries, tokens, mask, runs = computed
    own = converters.load_dictionary(folder, model, layer=0, cross_layer=False)
    table = qlens_jax.query_lens(
        model, own, tokens, mask, lenses=["query_lens_value"], features=FEATURES, k=K, path="per-feature"
    ).get("query_lens_value")
    whole = _table(runs["dense"], "query_lens_value", 0)
    assert not np.array_equal(table.top_ids, whole.top_ids)


def test_stats_refused_by_name(computed):
    _, model, _, dictionaries, tokens, mask, _ = computed
    with pytest.raises(LensRequestError, match="stats .* cross-layer transcoder dictionary 0 \\(clt-40, layer 0\\)"):
        qlens_jax.query_lens(model, dictionaries, tokens, mask, lenses=["query_lens_value"], stats=True)


def test_one_layer_consumers_refuse_it(computed):
    """What knows one write layer only refuses a cross-layer transcoder by name, before any work."""
    from qlens_jax.baselines import baseline_signatures
    from qlens_jax.channels.responses import check_sources
    from qlens_jax.dictionaries import DictionaryError

    _, model, _, dictionaries, tokens, mask, _ = computed
    with pytest.raises(
        DictionaryError, match="zero_out.*cross-layer transcoder 'clt-40' \\(layer 0, writes into layers 0..2\\)"
    ):
        baseline_signatures(model, dictionaries, tokens, mask, lenses=["zero_out"])
    with pytest.raises(DictionaryError, match="channel analysis .*'clt-40'.*cross_layer=False"):
        check_sources(dictionaries)
