"""Secant baselines against their definition: two plain forward passes with the dictionary
spliced in by hand (`splice_reference.spliced_logits`), for every site a dictionary can have
(residual points, transcoders, and SAEs on the module outputs `z`, `attn_out`, `mlp_out` of
GPT-2 and of Gemma-3, whose post-norms sit between `z` and the residual), dictionaries with
per-token input normalization, skip connections and JumpReLU/TopK gates, and a soft-capped
model (logits summed instead of the normed residual)."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import converters
from qlens_jax.baselines import baseline_signatures
from qlens_jax.baselines.secant import mean_differences, secant_spec, sums_logits
from qlens_jax.baselines.splice import feature_change, point_value, site_input, write_point
from qlens_jax.lens.options import ExecutionOptions, LensOptions
from qlens_jax.lens.points import value_points
from qlens_jax.lens.transport import run_from
from qlens_jax.lens.validation import LensRequestError
from qlens_jax.models import attention_output
from splice_reference import clean_logits, direct_secant, make_dictionary
from tiny_models import build_hf_model, padded_batch

LENSES = ("zero_out", "token_change_1", "token_change_5", "token_change_10")
FEATURES = np.array([1, 6, 17])


def _model(arch):
    model = converters.load_model(build_hf_model(arch, seed=0))
    tokens, mask = padded_batch(model.config.vocab_size, batch=3, seq=9, seed=1)
    return model, tokens, mask


@pytest.fixture(scope="module")
def gpt2():
    return _model("gpt2")


@pytest.fixture(scope="module")
def models(gpt2):
    return {"gpt2": gpt2, "gemma3-sliding": _model("gemma3-sliding"), "neox-parallel": _model("neox-parallel")}


def _dictionaries(d, n_layers):
    return {
        "sae-resid_pre": make_dictionary(d, 1, "resid_pre", "resid_pre", "sae", 1),
        "sae-resid_mid-layernorm-topk": make_dictionary(
            d, 0, "resid_mid", "resid_mid", "sae", 2, activation="topk", k=6, input_norm="layer_norm"
        ),
        "sae-resid_post-last-jumprelu": make_dictionary(
            d,
            n_layers - 1,
            "resid_post",
            "resid_post",
            "sae",
            3,
            activation="jumprelu",
            rescale_acts_by_decoder_norm=True,
        ),
        "transcoder-mlp_in-skip": make_dictionary(d, 1, "mlp_in", "mlp_out", "transcoder", 4, skip=True),
        "transcoder-resid_mid": make_dictionary(d, 0, "resid_mid", "mlp_out", "transcoder", 5),
    }


def _module_output_dictionary(model, site: str):
    """An SAE on `site` (`z`, `attn_out` or `mlp_out`) of a middle or the last block, with varied options."""
    c = model.config
    width = c.n_heads * c.head_dim if site == "z" else c.d_model
    options = {
        "z": dict(activation="jumprelu", input_norm="layer_norm"),
        "attn_out": dict(skip=True),
        "mlp_out": dict(rescale_acts_by_decoder_norm=True),
    }[site]
    layer = {"z": 1, "attn_out": c.n_layers - 2, "mlp_out": c.n_layers - 1}[site]
    # seeds whose FEATURES are active somewhere in every model
    seed = {"z": 10, "attn_out": 17, "mlp_out": 20 if c.parallel_residual else 15}[site]
    return make_dictionary(width, layer, site, site, "sae", seed, **options)


def _scores(model, dictionary, tokens, mask, lenses=LENSES, features=FEATURES):
    """Full score vectors `[lens, feature, vocab]` from the batched implementation."""
    specs = [secant_spec(lens) for lens in lenses]
    values = np.repeat([v for v, _ in specs], len(features))
    signs = np.repeat([s for _, s in specs], len(features))
    diffs = mean_differences(
        model,
        dictionary,
        tokens,
        mask,
        np.tile(features, len(lenses)),
        values,
        signs,
        sequences_per_chunk=2,
        config_chunk=5,
    )
    scores = np.asarray(diffs) if sums_logits(model) else np.asarray(diffs @ model.W_U)
    return scores.reshape(len(lenses), len(features), -1)


def _tolerance(model, tokens, mask):
    # float32 logits of magnitude M lose ~1e-7 M per op; differences of means keep that absolute error.
    return 1e-5 * float(np.abs(np.asarray(clean_logits(model, jnp.asarray(tokens), jnp.asarray(mask)))).max())


@pytest.mark.parametrize("which", list(_dictionaries(48, 3)))
def test_secant_lenses_match_hand_splice(gpt2, which):
    model, tokens, mask = gpt2
    dictionary = _dictionaries(model.config.d_model, model.config.n_layers)[which]
    ours = _scores(model, dictionary, tokens, mask)
    atol = _tolerance(model, tokens, mask)
    for i, lens in enumerate(LENSES):
        for j, feature in enumerate(FEATURES):
            expected = direct_secant(model, tokens, mask, dictionary, int(feature), lens)
            assert np.abs(expected).max() > 100 * atol, "degenerate test: the intervention changes nothing"
            np.testing.assert_allclose(ours[i, j], expected, rtol=1e-4, atol=atol, err_msg=f"{lens} feature {feature}")


@pytest.mark.parametrize("site", ["z", "attn_out", "mlp_out"])
@pytest.mark.parametrize("arch", ["gpt2", "gemma3-sliding", "neox-parallel"])
def test_module_output_secants_match_hand_splice(models, arch, site):
    model, tokens, mask = models[arch]
    _assert_secants_match_hand_splice(model, tokens, mask, _module_output_dictionary(model, site))


def test_parallel_block_transcoder_secants_match_hand_splice(models):
    """A transcoder reading the MLP block input of a parallel block (its resid_mid: resid_pre)."""
    model, tokens, mask = models["neox-parallel"]
    _assert_secants_match_hand_splice(
        model, tokens, mask, make_dictionary(model.config.d_model, 1, "resid_mid", "mlp_out", "transcoder", 17)
    )


def _assert_secants_match_hand_splice(model, tokens, mask, dictionary):
    lenses = ("zero_out", "token_change_5")
    ours = _scores(model, dictionary, tokens, mask, lenses=lenses)
    atol = _tolerance(model, tokens, mask)
    for i, lens in enumerate(lenses):
        for j, feature in enumerate(FEATURES):
            expected = direct_secant(model, tokens, mask, dictionary, int(feature), lens)
            assert np.abs(expected).max() > 100 * atol, "degenerate test: the intervention changes nothing"
            np.testing.assert_allclose(ours[i, j], expected, rtol=1e-4, atol=atol, err_msg=f"{lens} feature {feature}")


def test_module_output_sites_are_read_as_written(models):
    """The site values the splice reads add up to the residual stream: `attn_out` and `mlp_out`
    are the differences of consecutive residual points, and `z` (heads concatenated) through
    the output projection and post-norm gives `attn_out`, on a model with post-norms and
    n_heads x head_dim != d_model."""
    model, tokens, mask = models["gemma3-sliding"]
    c = model.config
    assert c.n_heads * c.head_dim != c.d_model
    _, residuals = model.run_with_residuals(jnp.asarray(tokens), jnp.asarray(mask))
    layer = 1
    attn_out = make_dictionary(c.d_model, layer, "attn_out", "attn_out", "sae", 1)
    mlp_out = make_dictionary(c.d_model, layer, "mlp_out", "mlp_out", "sae", 2)
    z = make_dictionary(c.n_heads * c.head_dim, layer, "z", "z", "sae", 3)
    pre, mid, post = (np.asarray(getattr(residuals, s)[layer]) for s in ("resid_pre", "resid_mid", "resid_post"))
    valid = np.asarray(mask)
    np.testing.assert_allclose(
        np.asarray(site_input(attn_out, residuals))[valid], (mid - pre)[valid], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(site_input(mlp_out, residuals))[valid], (post - mid)[valid], rtol=1e-5, atol=1e-5
    )
    x = site_input(z, residuals)
    assert x.shape == (*tokens.shape, c.n_heads * c.head_dim)
    block, _ = model.block(layer)
    np.testing.assert_allclose(np.asarray(attention_output(block, x))[valid], (mid - pre)[valid], rtol=1e-5, atol=1e-5)


def test_z_dictionary_has_no_residual_write_point(models):
    model, _, _ = models["gemma3-sliding"]
    c = model.config
    z = make_dictionary(c.n_heads * c.head_dim, 1, "z", "z", "sae", 3)
    with pytest.raises(LensRequestError, match="z\\[1\\].*tuned-lens"):
        write_point(z, c.n_layers)
    attn_out = make_dictionary(c.d_model, 1, "attn_out", "attn_out", "sae", 1)
    mlp_out = make_dictionary(c.d_model, 1, "mlp_out", "mlp_out", "sae", 2)
    resid_mid = make_dictionary(c.d_model, 1, "resid_mid", "resid_mid", "sae", 1)
    resid_post = make_dictionary(c.d_model, 1, "resid_post", "resid_post", "sae", 1)
    assert write_point(attn_out, c.n_layers) == write_point(resid_mid, c.n_layers)
    assert write_point(mlp_out, c.n_layers) == write_point(resid_post, c.n_layers)


def test_signatures_are_topk_of_the_definition(gpt2):
    model, tokens, mask = gpt2
    dictionary = _dictionaries(model.config.d_model, model.config.n_layers)["transcoder-mlp_in-skip"]
    sigs = baseline_signatures(
        model,
        [dictionary],
        tokens,
        mask,
        lenses=LENSES,
        features=FEATURES,
        options=LensOptions(k=7),
        execution=ExecutionOptions(sequences_per_chunk=2),
    )
    assert [t.lens for t in sigs] == list(LENSES)
    for table in sigs:
        assert table.dictionary == dictionary.name and table.layer == dictionary.layer
        np.testing.assert_array_equal(table.feature_ids, FEATURES)
        for j, feature in enumerate(FEATURES):
            expected = direct_secant(model, tokens, mask, dictionary, int(feature), table.lens)
            order = np.argsort(-expected)
            np.testing.assert_array_equal(table.top_ids[j], order[:7])
            np.testing.assert_array_equal(table.bottom_ids[j], order[::-1][:7])
            np.testing.assert_allclose(
                table.top_scores[j], expected[order[:7]], rtol=1e-4, atol=_tolerance(model, tokens, mask)
            )


def test_softcapped_model_sums_logits():
    model, tokens, mask = _model("gemma3-softcap")
    assert sums_logits(model)
    dictionary = make_dictionary(model.config.d_model, 0, "resid_post", "resid_post", "sae", 7)
    ours = _scores(model, dictionary, tokens, mask, lenses=("zero_out", "token_change_5"), features=FEATURES[:2])
    for i, lens in enumerate(("zero_out", "token_change_5")):
        for j, feature in enumerate(FEATURES[:2]):
            expected = direct_secant(model, tokens, mask, dictionary, int(feature), lens)
            np.testing.assert_allclose(ours[i, j], expected, rtol=1e-4, atol=_tolerance(model, tokens, mask))


def test_feature_change_is_the_literal_splice(gpt2):
    """decode(a with a_i replaced) - decode(a) == the single-feature change, per position."""
    model, tokens, mask = gpt2
    d = _dictionaries(model.config.d_model, model.config.n_layers)["sae-resid_mid-layernorm-topk"]
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, model.config.d_model)), jnp.float32)
    acts = d.encode(x)
    new = 2.5
    literal = d.decode(acts.at[..., 4].set(new), x) - d.decode(acts, x)
    ours = feature_change(d, x, jnp.asarray(4), new - acts[..., 4])
    np.testing.assert_allclose(ours, literal, rtol=1e-5, atol=1e-5)


def test_run_from_every_point_is_the_clean_run(gpt2):
    """Running on from any residual point's clean value gives the clean final residual."""
    model, tokens, mask = gpt2
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    _, residuals = model.run_with_residuals(tokens, mask)
    final = residuals.resid_post[-1]
    jitted = eqx.filter_jit(run_from)
    for point in value_points(model.config.n_layers):
        ours = jitted(model, point_value(residuals, point), mask, point)
        np.testing.assert_allclose(
            np.asarray(ours)[np.asarray(mask)], np.asarray(final)[np.asarray(mask)], rtol=1e-5, atol=1e-5
        )


def test_a_non_finite_baseline_score_is_refused_naming_the_feature(gpt2):
    """A feature whose decoder row overflows the forward pass gives NaN logit differences: the
    baseline stops (`NonFiniteScoreError`, exit code 2 in `qlens evaluate`) instead of ranking them."""
    from qlens_jax.errors import NonFiniteScoreError

    model, tokens, mask = gpt2
    dictionary = _dictionaries(model.config.d_model, model.config.n_layers)["sae-resid_pre"]
    dictionary = eqx.tree_at(lambda d: d.W_dec, dictionary, dictionary.W_dec.at[6].set(3e38))
    with pytest.raises(
        NonFiniteScoreError, match=r"token_change_1 of dictionary .* \(layer 1\), feature 6: .*non-finite"
    ):
        baseline_signatures(
            model,
            [dictionary],
            tokens,
            mask,
            lenses=("token_change_1",),
            features=FEATURES,
            options=LensOptions(k=7),
            execution=ExecutionOptions(sequences_per_chunk=2),
        )
