"""Dictionaries on module outputs (`attn_out`, `z`, `mlp_out`) mixed with a residual SAE in one
request: every lens defined at the site agrees with the independent PyTorch reference
(benchmarks/reference_torch.py), on the dense and the per-feature path, on tiny GPT-2, Llama,
Qwen-3 and Gemma-3 models (DESIGN.md section 1b)."""

import jax.numpy as jnp
import numpy as np
import pytest

import qlens_jax
from benchmarks import reference_torch as ref
from kernel_fixtures import FEATURES, N_FEATURES, setup
from qlens_jax.dictionaries import Dictionary
from qlens_jax.lens.validation import LensRequestError

RTOL = 1e-4
K = 8
SITE_LAYERS = (("z", 0), ("attn_out", 1), ("mlp_out", 0), ("resid_post", 1))


def site_dictionary(config, site: str, layer: int, seed: int) -> Dictionary:
    width = config.n_heads * config.head_dim if site == "z" else config.d_model
    rng = np.random.default_rng(seed)
    return Dictionary(
        W_enc=jnp.asarray(rng.normal(size=(width, N_FEATURES)), jnp.float32),
        b_enc=jnp.asarray(rng.normal(size=N_FEATURES), jnp.float32),
        W_dec=jnp.asarray(rng.normal(size=(N_FEATURES, width)), jnp.float32),
        b_dec=jnp.asarray(rng.normal(size=width), jnp.float32),
        layer=layer, site_in=site, site_out=site, kind="sae", name=f"{site.replace('_', '-')}-40", activation="relu",
    )


def lenses_for(site: str) -> tuple[str, ...]:
    return tuple(lens for lens in qlens_jax.LENSES if not (site == "z" and lens == "logit_lens_key"))


@pytest.fixture(scope="module", params=["gpt2", "llama-gqa2-llama3rope", "qwen3-gqa4-tied", "gemma3-sliding"])
def computed(request):
    hf, model, _, tokens, mask = setup(request.param)
    dictionaries = [site_dictionary(model.config, site, layer, seed) for seed, (site, layer) in enumerate(SITE_LAYERS)]
    common = dict(features=FEATURES, k=K, sequences_per_chunk=2)
    lenses = [lens for lens in qlens_jax.LENSES if lens != "logit_lens_key"]
    results = {
        path: qlens_jax.query_lens(model, dictionaries, tokens, mask, lenses=lenses, path=path, **common)
        for path in ("dense", "per-feature")
    }
    key_lens = qlens_jax.query_lens(model, [d for d in dictionaries if d.site_in != "z"], tokens, mask,
                                    lenses=["logit_lens_key"], **common)
    return hf, model, dictionaries, tokens, mask, results, key_lens


def _reference(hf, dictionary, lens, tokens, mask):
    side = "value" if lens.endswith("value") else "key"
    vectors = np.asarray(dictionary.value_vectors() if side == "value" else dictionary.key_vectors())[FEATURES]
    return ref.reference_scores(hf, tokens, mask, lens, vectors, dictionary.site_in, dictionary.layer, kind="sae")


def _assert_matches(table, scores):
    top_ids, _, bottom_ids, _ = ref.topk_with_scores(scores, K)
    scale = np.abs(scores).max(axis=1, keepdims=True)
    np.testing.assert_array_equal(table.top_ids, top_ids)
    np.testing.assert_array_equal(table.bottom_ids, bottom_ids)
    np.testing.assert_allclose(table.top_scores / scale, np.take_along_axis(scores, top_ids, 1) / scale, atol=RTOL, rtol=0)
    np.testing.assert_allclose(table.bottom_scores / scale, np.take_along_axis(scores, bottom_ids, 1) / scale, atol=RTOL, rtol=0)


@pytest.mark.parametrize("lens", qlens_jax.LENSES)
def test_module_output_lenses_match_the_reference(computed, lens):
    hf, model, dictionaries, tokens, mask, results, key_lens = computed
    for dictionary in dictionaries:
        if lens not in lenses_for(dictionary.site_in):
            continue
        scores = _reference(hf, dictionary, lens, tokens, mask)
        tables = [key_lens] if lens == "logit_lens_key" else list(results.values())
        for result in tables:
            _assert_matches(result.get(lens, dictionary.name), scores)


def test_first_order_terms_of_both_paths_agree(computed):
    *_, results, _ = computed
    for lens in ("first_order_value", "first_order_key"):
        for dense, per_feature in zip(*([t for t in results[path] if t.lens == lens] for path in ("dense", "per-feature"))):
            np.testing.assert_array_equal(dense.layer_indices, per_feature.layer_indices)
            np.testing.assert_array_equal(dense.layer_top_ids, per_feature.layer_top_ids)


def test_logit_lens_key_is_refused_for_z_dictionaries(computed):
    _, model, dictionaries, tokens, mask, *_ = computed
    with pytest.raises(LensRequestError, match="logit_lens_key has no definition for dictionary 0 .*z"):
        qlens_jax.query_lens(model, dictionaries, tokens, mask, lenses=["logit_lens_key"], features=FEATURES)
