"""Every lens agrees with the independent PyTorch reference (benchmarks/reference_torch.py),
and the dense and per-feature paths agree with each other, on GPT-2, Llama, Qwen-3, Gemma-3,
Gemma-2 (soft-caps that bite), Gemma-1 and Mistral (sliding windows), Qwen3-MoE (top-2 renormalized
routed experts in layer 1 beside dense MLPs in layers 0, 2, 3),
for residual SAEs, a transcoder and SAEs on module outputs (`z`, `attn_out`, `mlp_out`,
docs/definitions.md section 1b) in one request."""

import numpy as np
import pytest

import qlens_jax
from benchmarks import reference_torch as ref
from kernel_fixtures import FEATURES, lenses_for, module_output_dictionaries, reference_site, setup
from qlens_jax.lens.signatures import Signatures
from qlens_jax.lens.validation import LensRequestError

RTOL = 1e-4
K = 8


@pytest.fixture(
    scope="module",
    params=[
        "gpt2",
        "llama-gqa2-llama3rope",
        "qwen3-gqa4-tied",
        "gemma3-sliding",
        "qwen3moe-mixed",
        "neox-parallel",
        "gemma2-softcaps",
        "gemma-geglu",
        "mistral-sliding",
        "gptoss-every-key",
        "qwen35-hybrid",
        "qwen35moe-hybrid",
    ],
)
def computed(request):
    hf, model, dictionaries, tokens, mask = setup(request.param)
    dictionaries = dictionaries + module_output_dictionaries(model.config)
    return (
        hf,
        model,
        dictionaries,
        tokens,
        mask,
        *(run(model, dictionaries, tokens, mask, path) for path in ("dense", "per-feature")),
    )


def run(model, dictionaries, tokens, mask, path: str) -> Signatures:
    """Every lens defined for each dictionary (`logit_lens_key` in a second request without the
    `z` dictionaries), in the order of `qlens_jax.LENSES`."""
    common = dict(features=FEATURES, k=K, sequences_per_chunk=2, path=path, stats=path == "per-feature")
    most = [lens for lens in qlens_jax.LENSES if lens != "logit_lens_key"]
    tables = list(qlens_jax.query_lens(model, dictionaries, tokens, mask, lenses=most, **common))
    with_keys = [d for d in dictionaries if "logit_lens_key" in lenses_for(d)]
    tables += list(qlens_jax.query_lens(model, with_keys, tokens, mask, lenses=["logit_lens_key"], **common))
    return Signatures(sorted(tables, key=lambda t: qlens_jax.LENSES.index(t.lens)))


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
    np.testing.assert_allclose(
        table.top_scores / scale, np.take_along_axis(scores, top_ids, 1) / scale, atol=RTOL, rtol=0
    )
    np.testing.assert_allclose(
        table.bottom_scores / scale, np.take_along_axis(scores, bottom_ids, 1) / scale, atol=RTOL, rtol=0
    )


@pytest.mark.parametrize("lens", qlens_jax.LENSES)
def test_lens_matches_reference(computed, lens):
    hf, model, dictionaries, tokens, mask, dense, per_feature = computed
    for dictionary in dictionaries:
        if lens not in lenses_for(dictionary):
            continue
        scores = _reference_scores(hf, dictionary, lens, tokens, mask)
        for result in (dense, per_feature):
            _assert_matches_reference(result.get(lens, dictionary.name), scores)


def test_dense_and_per_feature_paths_agree(computed):
    _, _, dictionaries, *_, dense, per_feature = computed
    assert len(dense) == len(per_feature) == sum(len(lenses_for(d)) for d in dictionaries)
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
                    ref.value_readout(hf, np.stack(by_block))
                    if side == "value"
                    else ref.key_readout(hf, np.stack(by_block), tokens, mask)
                )
                top_ids, *_ = ref.topk_with_scores(readout, K)
                np.testing.assert_array_equal(table.layer_top_ids[row], top_ids)


def test_relative_variance_matches_reference(computed):
    hf, model, dictionaries, tokens, mask, _, per_feature = computed
    for dictionary in dictionaries[:2]:
        site, kind = reference_site(dictionary)
        for lens in ("query_lens_value", "query_lens_key", "first_order_value"):
            side = lens.split("_")[-1]
            vectors = np.asarray(dictionary.value_vectors() if side == "value" else dictionary.key_vectors())[FEATURES]
            want = ref.reference_relative_variance(hf, tokens, mask, lens, vectors, site, dictionary.layer, kind=kind)
            got = per_feature.get(lens, dictionary.name).stats["relative_variance"]
            assert 0 < want.min() and want.max() < 1
            np.testing.assert_allclose(got, want, atol=1e-4)


def test_results_identical_run_to_run(computed):
    hf, model, dictionaries, tokens, mask, dense, _ = computed
    again = run(model, dictionaries, tokens, mask, "dense")
    for a, b in zip(dense, again):
        np.testing.assert_array_equal(a.top_scores, b.top_scores)
        np.testing.assert_array_equal(a.bottom_ids, b.bottom_ids)


def test_logit_lens_key_is_refused_for_z_dictionaries(computed):
    _, model, dictionaries, tokens, mask, *_ = computed
    z = next(i for i, d in enumerate(dictionaries) if d.site_in == "z")
    with pytest.raises(LensRequestError, match=f"logit_lens_key has no definition for dictionary {z} .*z"):
        qlens_jax.query_lens(model, dictionaries, tokens, mask, lenses=["logit_lens_key"], features=FEATURES)
