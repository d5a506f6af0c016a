"""The better-founded alternatives of docs/definitions.md section 1, each against the reference, and the
self-check, bfloat16 mode and saved operators."""

import numpy as np
import pytest

import qlens_jax
from benchmarks import reference_torch as ref
from kernel_fixtures import FEATURES, reference_site, setup
from qlens_jax.lens.operators import TransportOperators

K = 8


@pytest.fixture(scope="module")
def gpt2():
    return setup("gpt2")


def _check_against_reference(hf, dictionary, table, lens, tokens, mask, **opts):
    side = "value" if lens.endswith("value") else "key"
    vectors = np.asarray(dictionary.value_vectors() if side == "value" else dictionary.key_vectors())[FEATURES]
    site, kind = reference_site(dictionary)
    scores = ref.reference_scores(hf, tokens, mask, lens, vectors, site, dictionary.layer, kind=kind, **opts)
    top_ids, top_scores, _, _ = ref.topk_with_scores(scores, K)
    np.testing.assert_array_equal(table.top_ids, top_ids)
    scale = np.abs(scores).max()
    np.testing.assert_allclose(table.top_scores / scale, top_scores / scale, atol=1e-4, rtol=0)
    return table


@pytest.mark.parametrize(
    "lens, option, reference_option, dictionary_index",
    [
        ("query_lens_value", "remove_final_norm_bias", "remove_final_norm_bias", 0),
        ("logit_lens_value", "remove_final_norm_bias", "remove_final_norm_bias", 0),
        ("first_order_key", "first_order_key_mask_seed", "mask_seed", 1),
        ("query_lens_key", "exact_norm_jacobian", "exact_norm", 3),
    ],
)
def test_option_matches_reference_and_changes_the_result(gpt2, lens, option, reference_option, dictionary_index):
    hf, model, dictionaries, tokens, mask = gpt2
    dictionary = dictionaries[dictionary_index]
    common = dict(lenses=[lens], features=FEATURES, k=K, path="per-feature", sequences_per_chunk=2)
    with_option = qlens_jax.query_lens(model, [dictionary], tokens, mask, **{option: True}, **common)[0]
    without = qlens_jax.query_lens(model, [dictionary], tokens, mask, **common)[0]
    _check_against_reference(hf, dictionary, with_option, lens, tokens, mask, **{reference_option: True})
    assert not np.allclose(with_option.top_scores, without.top_scores, atol=1e-3)


def test_dense_path_honours_options(gpt2):
    hf, model, dictionaries, tokens, mask = gpt2
    common = dict(
        features=FEATURES, k=K, sequences_per_chunk=2, first_order_key_mask_seed=True, exact_norm_jacobian=True
    )
    dense = qlens_jax.query_lens(
        model, dictionaries[1:], tokens, mask, lenses=["first_order_key", "query_lens_key"], path="dense", **common
    )
    per_feature = qlens_jax.query_lens(
        model,
        dictionaries[1:],
        tokens,
        mask,
        lenses=["first_order_key", "query_lens_key"],
        path="per-feature",
        **common,
    )
    for a, b in zip(dense, per_feature):
        np.testing.assert_array_equal(a.top_ids, b.top_ids)
        np.testing.assert_allclose(a.top_scores, b.top_scores, rtol=1e-4, atol=1e-6)


def test_self_check_fails_loudly_on_a_wrong_operator(gpt2):
    hf, model, dictionaries, tokens, mask = gpt2
    good = qlens_jax.transport_operators(model, tokens, mask, sweeps=("value",))
    broken = TransportOperators(good.value.at[:, 0, 1].add(1.0), None, None, None, good.n_tokens)
    with pytest.raises(qlens_jax.SelfCheckError, match="self-check failed for query_lens_value"):
        qlens_jax.query_lens(
            model, dictionaries[:1], tokens, mask, lenses=["query_lens_value"], operators=broken, features=FEATURES
        )


def test_saved_operators_serve_new_dictionaries_without_sweeps(gpt2, tmp_path, monkeypatch):
    hf, model, dictionaries, tokens, mask = gpt2
    operators = qlens_jax.transport_operators(model, tokens, mask, sweeps=("value", "key"))
    qlens_jax.save_operators(operators, tmp_path / "ops")
    loaded = qlens_jax.load_operators(tmp_path / "ops")
    assert loaded.n_tokens == int(mask.sum())
    np.testing.assert_array_equal(np.asarray(loaded.value), np.asarray(operators.value))
    fresh = qlens_jax.query_lens(model, dictionaries, tokens, mask, features=FEATURES, k=K, path="dense")

    def no_sweeps(*args, **kwargs):
        raise AssertionError("operators were recomputed")

    monkeypatch.setattr("qlens_jax.lens.api.transport_operators", no_sweeps)
    reused = qlens_jax.query_lens(model, dictionaries, tokens, mask, features=FEATURES, k=K, operators=loaded)
    for a, b in zip(fresh, reused):
        np.testing.assert_array_equal(a.top_ids, b.top_ids)
        np.testing.assert_array_equal(a.top_scores, b.top_scores)


def test_bfloat16_top_k_overlap_with_float32(gpt2):
    """bfloat16 is a speed option: its agreement with float32 is measured, not assumed."""
    hf, model, dictionaries, tokens, mask = gpt2
    common = dict(lenses=["query_lens_value", "query_lens_key"], k=25, path="dense", sequences_per_chunk=2)
    f32 = qlens_jax.query_lens(model, dictionaries, tokens, mask, **common)
    bf16 = qlens_jax.query_lens(model, dictionaries, tokens, mask, dtype="bfloat16", **common)
    overlaps = []
    for a, b in zip(f32, bf16):
        overlaps += [len(set(x) & set(y)) / 25 for x, y in zip(a.top_ids, b.top_ids)]
    mean = float(np.mean(overlaps))
    print(f"bfloat16 vs float32 mean top-25 overlap: {mean:.3f} over {len(overlaps)} signatures")
    assert mean > 0.8
