"""Every lens agrees with the independent PyTorch reference (benchmarks/reference_torch.py),
and the dense and per-feature paths agree with each other, on GPT-2, Qwen-3 and Gemma-3."""

import numpy as np
import pytest

import qlens_jax
from benchmarks import reference_torch as ref
from kernel_fixtures import FEATURES, reference_site, setup

RTOL = 1e-4
K = 8


@pytest.fixture(scope="module", params=["gpt2", "qwen3-gqa4-tied", "gemma3-sliding"])
def computed(request):
    hf, model, dictionaries, tokens, mask = setup(request.param)
    common = dict(lenses=qlens_jax.LENSES, features=FEATURES, k=K, sequences_per_chunk=2)
    dense = qlens_jax.query_lens(model, dictionaries, tokens, mask, path="dense", **common)
    per_feature = qlens_jax.query_lens(model, dictionaries, tokens, mask, path="per-feature", stats=True, **common)
    return hf, model, dictionaries, tokens, mask, dense, per_feature


def _reference_scores(hf, dictionary, lens, tokens, mask, **opts):
    side = "value" if lens.endswith("value") else "key"
    vectors = np.asarray(dictionary.value_vectors() if side == "value" else dictionary.key_vectors())[FEATURES]
    site, kind = reference_site(dictionary)
    return ref.reference_scores(hf, tokens, mask, lens, vectors, site, dictionary.layer, kind=kind, **opts)


def _assert_matches_reference(table, scores):
    top_ids, _, bottom_ids, _ = ref.topk_with_scores(scores, K)
    scale = np.abs(scores).max(axis=1, keepdims=True)
    np.testing.assert_array_equal(table.top_ids, top_ids)
    np.testing.assert_array_equal(table.bottom_ids, bottom_ids)
    np.testing.assert_allclose(table.top_scores / scale, np.take_along_axis(scores, top_ids, 1) / scale, atol=RTOL, rtol=0)
    np.testing.assert_allclose(table.bottom_scores / scale, np.take_along_axis(scores, bottom_ids, 1) / scale, atol=RTOL, rtol=0)


@pytest.mark.parametrize("lens", qlens_jax.LENSES)
def test_lens_matches_reference(computed, lens):
    hf, model, dictionaries, tokens, mask, dense, per_feature = computed
    for dictionary in dictionaries:
        scores = _reference_scores(hf, dictionary, lens, tokens, mask)
        for result in (dense, per_feature):
            _assert_matches_reference(result.get(lens, dictionary.name), scores)


def test_dense_and_per_feature_paths_agree(computed):
    *_, dense, per_feature = computed
    assert len(dense) == len(per_feature) == len(qlens_jax.LENSES) * 4
    for a, b in zip(dense, per_feature):
        assert (a.lens, a.dictionary, a.layer) == (b.lens, b.dictionary, b.layer)
        np.testing.assert_array_equal(a.top_ids, b.top_ids)
        np.testing.assert_array_equal(a.bottom_ids, b.bottom_ids)
        scale = np.abs(a.top_scores).max()
        np.testing.assert_allclose(a.top_scores / scale, b.top_scores / scale, atol=RTOL, rtol=0)
        if a.lens.startswith("first_order"):
            np.testing.assert_array_equal(a.layer_indices, b.layer_indices)
            np.testing.assert_array_equal(a.layer_top_ids, b.layer_top_ids)
            np.testing.assert_allclose(a.layer_energy, b.layer_energy, atol=1e-4)


def test_first_order_terms_match_reference_per_layer(computed):
    """Each block's first-order term and its energy, against the reference's per-module terms."""
    hf, model, dictionaries, tokens, mask, dense, _ = computed
    for dictionary in dictionaries:
        site, kind = reference_site(dictionary)
        for side in ("value", "key"):
            table = dense.get(f"first_order_{side}", dictionary.name)
            vectors = np.asarray(dictionary.value_vectors() if side == "value" else dictionary.key_vectors())[FEATURES]
            for row, vector in enumerate(vectors):
                if side == "value":
                    terms = ref.first_order_value_terms(hf, tokens, mask, vector, site, dictionary.layer, kind=kind)
                else:
                    terms = ref.first_order_key_terms(hf, tokens, mask, vector, site, dictionary.layer, kind=kind)
                direct = terms.pop("direct" if side == "value" else "identity")
                blocks = sorted({int(name.split(".")[1]) for name in terms})
                by_block = [direct] + [sum(v for n, v in terms.items() if int(n.split(".")[1]) == b) for b in blocks]
                total = np.sum(by_block, axis=0)
                energy = np.array([t @ total for t in by_block]) / (total @ total)
                np.testing.assert_array_equal(table.layer_indices, [dictionary.layer, *blocks])
                np.testing.assert_allclose(table.layer_energy[row], energy, atol=1e-4)
                readout = (
                    ref.value_readout(hf, np.stack(by_block)) if side == "value"
                    else ref.key_readout(hf, np.stack(by_block), tokens, mask)
                )
                top_ids, *_ = ref.topk_with_scores(readout, K)
                np.testing.assert_array_equal(table.layer_top_ids[row], top_ids)


def test_relative_variance_matches_reference(computed):
    hf, model, dictionaries, tokens, mask, _, per_feature = computed
    for dictionary in dictionaries[:2]:
        site, kind = reference_site(dictionary)
        for lens in ("query_lens_value", "query_lens_key"):
            side = lens.split("_")[-1]
            vectors = np.asarray(dictionary.value_vectors() if side == "value" else dictionary.key_vectors())[FEATURES]
            want = ref.reference_relative_variance(hf, tokens, mask, lens, vectors, site, dictionary.layer, kind=kind)
            got = per_feature.get(lens, dictionary.name).stats["relative_variance"]
            assert 0 < want.min() and want.max() < 1
            np.testing.assert_allclose(got, want, atol=1e-4)


def test_results_identical_run_to_run(computed):
    hf, model, dictionaries, tokens, mask, dense, _ = computed
    again = qlens_jax.query_lens(
        model, dictionaries, tokens, mask, lenses=qlens_jax.LENSES, features=qlens_jax_features(), k=K,
        path="dense", sequences_per_chunk=2,
    )
    for a, b in zip(dense, again):
        np.testing.assert_array_equal(a.top_scores, b.top_scores)
        np.testing.assert_array_equal(a.bottom_ids, b.bottom_ids)


def qlens_jax_features():
    return FEATURES
