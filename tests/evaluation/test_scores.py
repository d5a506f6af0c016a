"""I(T) and O(T) on hand-checkable cases, the running top-k of contexts against brute force,
alpha calibration and rank changes against the hand splice (residual SAEs, and SAEs on the
module outputs `z`, `attn_out`, `mlp_out` of GPT-2 and Gemma-3), and `evaluate` end to end with
oracle lenses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import converters
from qlens_jax.baselines.splice import site_input
from qlens_jax.evaluation import (
    EvaluationOptions,
    Promoted,
    TopContexts,
    calibrate_alphas,
    evaluate,
    input_scores,
    output_scores,
    promoted_tokens,
    rank_changes,
    top_contexts,
)
from qlens_jax.evaluation.matching import normalize_token
from qlens_jax.evaluation.output_score import output_score_intervals
from qlens_jax.evaluation.steering import rank_percentiles
from qlens_jax.lens.signatures import Signatures, SignatureTable
from qlens_jax.models import attention_output
from splice_reference import clean_logits, make_dictionary, spliced_logits
from tiny_models import build_hf_model


def _world(arch):
    model = converters.load_model(build_hf_model(arch, seed=0))
    rng = np.random.default_rng(0)
    windows = rng.integers(3, model.config.vocab_size, size=(40, 10)).astype(np.int32)
    prefixes = rng.integers(3, model.config.vocab_size, size=(6, 5)).astype(np.int32)
    prefix_mask = np.arange(5)[None] < np.array([5, 4, 3, 5, 2, 4])[:, None]
    dictionary = make_dictionary(
        model.config.d_model, 1, "resid_post", "resid_post", "sae", 11, n=64, activation="topk", k=2
    )
    return model, dictionary, windows, np.where(prefix_mask, prefixes, 0), prefix_mask


@pytest.fixture(scope="module")
def gpt2():
    return _world("gpt2")


@pytest.fixture(scope="module")
def worlds(gpt2):
    return {"gpt2": gpt2, "gemma3-sliding": _world("gemma3-sliding")}


def _module_output_sae(model, site: str, **options):
    """An SAE on module output `site` of block 1 (`z`: n_heads x head_dim wide)."""
    c = model.config
    width = c.n_heads * c.head_dim if site == "z" else c.d_model
    return make_dictionary(width, 1, site, site, "sae", 21, n=64, **options)


# ---- input score -------------------------------------------------------------------------------
def _top(values, tokens):
    values, tokens = np.asarray([values], np.float32), np.asarray([tokens])
    idx = np.arange(values.shape[1])[None]
    return TopContexts(np.array([0]), values, idx, idx, tokens)


def test_input_score_by_hand():
    top = _top([3.0, 2.0, 1.0, 0.5, 0.0], [5, 5, 7, 9, 11])  # the last context is inactive
    assert input_scores(top, [[5, 9, 11]], min_contexts=4)[0] == pytest.approx(3 / 4)  # 5, 5, 9 of 5, 5, 7, 9
    assert input_scores(top, [[7]], min_contexts=4)[0] == pytest.approx(1 / 4)
    assert input_scores(top, [[11, 12]], min_contexts=4)[0] == 0.0  # 11 only where inactive
    assert np.isnan(input_scores(top, [[5]], min_contexts=5)[0])  # only 4 active contexts


def test_string_matching_normalizes_space_markers():
    vocab = np.array(["Ġcat", "cat", " dog", "Ċ", "Dog", " cat"], dtype=object)
    assert normalize_token("Ġcat", strip=True) == "cat" and normalize_token(" dog", strip=True) == "dog"
    top = _top([1.0, 1.0, 1.0], [0, 2, 4])
    assert input_scores(top, [[1, 2]], min_contexts=1, match="stripped", vocab=vocab)[0] == pytest.approx(
        2 / 3
    )  # case kept: Dog != dog
    assert input_scores(top, [[1, 2]], min_contexts=1, match="ids")[0] == pytest.approx(1 / 3)
    # The authors' rule: markers become whitespace, which is kept: "Ġcat" == " cat" != "cat".
    assert input_scores(top, [[1, 2]], min_contexts=1, match="strings", vocab=vocab)[0] == pytest.approx(1 / 3)
    assert input_scores(top, [[5]], min_contexts=1, match="strings", vocab=vocab)[0] == pytest.approx(1 / 3)


def test_top_contexts_match_brute_force(gpt2):
    model, dictionary, windows, _, _ = gpt2
    mask = np.ones(windows.shape, bool)
    mask[::3, 7:] = False  # some padded windows
    features = np.array([0, 3, 7, 15])
    (top,) = top_contexts(model, [dictionary], [features], windows, mask, n_top=6, sequences_per_chunk=7)
    _, residuals = model.run_with_residuals(jnp.asarray(windows), jnp.asarray(mask))
    acts = np.asarray(dictionary.encode(site_input(dictionary, residuals)))[..., features]  # [n, s, F]
    acts = np.where(mask[..., None], acts, -np.inf)
    best, where = acts.max(1), acts.argmax(1)  # [n, F]
    for f in range(len(features)):
        order = np.argsort(-best[:, f], kind="stable")[:6]
        np.testing.assert_allclose(top.values[f], best[order, f], rtol=1e-6)
        np.testing.assert_array_equal(top.contexts[f], order)
        np.testing.assert_array_equal(top.positions[f], where[order, f])
        np.testing.assert_array_equal(top.tokens[f], windows[order, where[order, f]])
    assert top.active.any() and not top.active.all(), "degenerate test: choose features that are sometimes active"


# ---- output score -----------------------------------------------------------------------------
def test_output_score_by_hand():
    promoted = Promoted(
        np.array([0, 1]),
        np.array([0.25, 0.5]),
        np.zeros((2, 2)),
        np.zeros((2, 2)),
        np.ones((2, 2), bool),
        np.array([[1, 2, 3, 4], [5, 6, 7, 8]]),
        np.zeros((2, 4)),
    )
    np.testing.assert_allclose(output_scores(promoted, [[2, 4, 6], [9, 10, 11]]), [0.5, 0.0])
    np.testing.assert_allclose(output_scores(promoted, [[4, 3, 2, 1, 0], [8, 7, 6, 5, 4]]), [1.0, 1.0])
    assert np.isnan(output_score_intervals(promoted, [[2, 4, 6], [9, 10, 11]])[0]).all()  # no draws, no interval
    # three bootstrap draws of S per feature: O(T) of [2, 4, 6] is 1/4, 2/4, 3/4 for feature 0 and 0 for feature 1
    promoted.resampled = np.array([[[2, 9, 9, 9], [2, 4, 9, 9], [2, 4, 6, 9]], [[1, 2, 3, 4]] * 3])
    low, high = output_score_intervals(promoted, [[2, 4, 6], [9, 10, 11]], level=0.5)
    np.testing.assert_allclose(low, [0.375, 0.0])  # the 25th percentile of 1/4, 2/4, 3/4
    np.testing.assert_allclose(high, [0.625, 0.0])


def test_rank_percentiles():
    lp = jnp.log(jnp.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]))
    np.testing.assert_allclose(rank_percentiles(lp), [[0.0, 1.0, 0.5], [1.0, 0.0, 0.5]])


def _last_logprobs(logits, mask):
    last = mask.sum(1) - 1
    return jax.nn.log_softmax(np.asarray(logits)[np.arange(len(last)), last], axis=-1)


def test_calibration_hits_the_kl_targets(gpt2):
    model, dictionary, _, prefixes, mask = gpt2
    features = jnp.asarray([2, 9])
    targets = jnp.asarray([0.25, 0.5])
    cal = calibrate_alphas(model, dictionary, jnp.asarray(prefixes), jnp.asarray(mask), features, targets, rtol=0.01)
    assert np.asarray(cal.reached).all(), cal
    clean = _last_logprobs(clean_logits(model, jnp.asarray(prefixes), jnp.asarray(mask)), mask)
    for f, feature in enumerate([2, 9]):
        for t, target in enumerate([0.25, 0.5]):
            alpha = float(cal.alphas[f, t])
            # Clamping at every valid position = the hand splice with the value set everywhere.
            steered = _last_logprobs(
                spliced_logits(model, prefixes, mask, dictionary, jnp.asarray(feature), jnp.float32(alpha)), mask
            )
            kl = float(np.mean(np.sum(np.exp(clean) * (clean - steered), axis=-1)))
            assert kl == pytest.approx(float(cal.kl[f, t]), rel=1e-4)
            assert kl == pytest.approx(target, rel=0.011)
        assert cal.alphas[f, 0] < cal.alphas[f, 1]


def test_rank_changes_match_hand_computation(gpt2):
    model, dictionary, _, prefixes, mask = gpt2
    alphas = jnp.asarray([[1.5, 4.0]])
    ours = np.asarray(
        rank_changes(
            model, dictionary, jnp.asarray(prefixes), jnp.asarray(mask), jnp.asarray([5]), alphas, jax.random.key(0)
        )
    )
    clean = _last_logprobs(clean_logits(model, jnp.asarray(prefixes), jnp.asarray(mask)), mask)
    expected = 0
    for alpha in (1.5, 4.0):
        steered = _last_logprobs(
            spliced_logits(model, prefixes, mask, dictionary, jnp.asarray(5), jnp.float32(alpha)), mask
        )
        pct = lambda lp: np.argsort(np.argsort(lp, -1), -1) / (lp.shape[-1] - 1)
        expected = expected + (pct(np.asarray(steered)) - pct(np.asarray(clean))).mean(0) / 2
    np.testing.assert_allclose(ours[0], expected, atol=1e-6)


def test_generation_steps_run_and_average(gpt2):
    model, dictionary, _, prefixes, mask = gpt2
    alphas = jnp.asarray([[2.0, 3.0]])
    args = (model, dictionary, jnp.asarray(prefixes), jnp.asarray(mask), jnp.asarray([4]), alphas, jax.random.key(1))
    one = np.asarray(rank_changes(*args, generate_tokens=0))
    gen = np.asarray(rank_changes(*args, generate_tokens=3))
    again = np.asarray(rank_changes(*args, generate_tokens=3))
    np.testing.assert_array_equal(gen, again)  # seeded
    assert gen.shape == one.shape and np.abs(gen).max() <= 1 and not np.allclose(gen, one)


@pytest.mark.parametrize("site", ["z", "attn_out", "mlp_out"])
@pytest.mark.parametrize("arch", ["gpt2", "gemma3-sliding"])
def test_module_output_steering_matches_hand_splice(worlds, arch, site):
    """Calibration and rank changes when the SAE sits on a module output: the steered run is
    the hand splice at that site (for `z`, before the output projection and Gemma-3's post-norm)."""
    model, _, _, prefixes, mask = worlds[arch]
    dictionary = _module_output_sae(model, site)
    feature = 9
    cal = calibrate_alphas(
        model,
        dictionary,
        jnp.asarray(prefixes),
        jnp.asarray(mask),
        jnp.asarray([feature]),
        jnp.asarray([0.25]),
        rtol=0.01,
    )
    assert np.asarray(cal.reached).all(), cal
    alpha = float(cal.alphas[0, 0])
    clean = _last_logprobs(clean_logits(model, jnp.asarray(prefixes), jnp.asarray(mask)), mask)
    steered = _last_logprobs(
        spliced_logits(model, prefixes, mask, dictionary, jnp.asarray(feature), jnp.float32(alpha)), mask
    )
    kl = float(np.mean(np.sum(np.exp(clean) * (clean - steered), axis=-1)))
    assert kl == pytest.approx(float(cal.kl[0, 0]), rel=1e-4)
    assert kl == pytest.approx(0.25, rel=0.011)
    ours = np.asarray(
        rank_changes(
            model,
            dictionary,
            jnp.asarray(prefixes),
            jnp.asarray(mask),
            jnp.asarray([feature]),
            jnp.asarray([[alpha]]),
            jax.random.key(0),
        )
    )
    pct = lambda lp: np.argsort(np.argsort(lp, -1), -1) / (lp.shape[-1] - 1)
    np.testing.assert_allclose(ours[0], (pct(np.asarray(steered)) - pct(np.asarray(clean))).mean(0), atol=1e-6)


def test_top_contexts_read_z_with_heads_concatenated(worlds):
    """A `z` SAE's contexts come from the heads' outputs flattened head by head, the input of
    the output projection (checked through it: o_proj and post-norm give resid_mid - resid_pre)."""
    model, _, windows, _, _ = worlds["gemma3-sliding"]
    dictionary = _module_output_sae(model, "z")
    features = np.array([0, 5, 9, 30])
    (top,) = top_contexts(model, [dictionary], [features], windows, n_top=4, sequences_per_chunk=16)
    _, residuals = model.run_with_residuals(jnp.asarray(windows))
    z = residuals.z[1].reshape(*windows.shape, -1)
    block, _ = model.block(1)
    np.testing.assert_allclose(
        attention_output(block, z), residuals.resid_mid[1] - residuals.resid_pre[1], rtol=1e-5, atol=1e-5
    )
    acts = np.asarray(dictionary.encode(z))[..., features]  # [n, s, F]
    best = acts.max(1)
    for f in range(len(features)):
        np.testing.assert_allclose(top.values[f], -np.sort(-best[:, f])[:4], rtol=1e-6)
    assert top.active.any(), "degenerate test: no feature is active"


# ---- end to end ---------------------------------------------------------------------------------
@pytest.mark.parametrize("case", ["gpt2-resid_post", "gemma3-sliding-z"])
def test_evaluate_with_oracle_lenses(worlds, case):
    """A lens listing exactly the activating tokens scores I = 1, one listing the promoted tokens
    O = 1, one listing neither 0 and 0 (a residual SAE, and an SAE on `z` of a Gemma-3 model)."""
    arch, site = case.rsplit("-", 1)
    model, dictionary, windows, prefixes, mask = worlds[arch]
    if site == "z":
        dictionary = _module_output_sae(model, "z")
    features = np.array([0, 3, 7, 15])
    k = 25
    options = EvaluationOptions(k=k, min_contexts=5, top_s=k, sequences_per_chunk=8)
    (top,) = top_contexts(model, [dictionary], [features], windows, n_top=5, sequences_per_chunk=8)
    promoted = promoted_tokens(model, dictionary, features, prefixes, mask, top_s=k)
    vocab = model.config.vocab_size

    def fill(wanted, avoid):
        rows = []
        for f in range(len(features)):
            row = list(dict.fromkeys(int(t) for t in wanted[f] if t >= 0))
            row += [t for t in range(vocab) if t not in row and t not in set(avoid[f].tolist())][: k - len(row)]
            rows.append(row[:k])
        return np.asarray(rows)

    active_tokens = np.where(top.active, top.tokens, -1)
    tables = {
        "oracle_input": fill(active_tokens, promoted.promoted),
        "oracle_output": fill(promoted.promoted, active_tokens),
        "neither": fill(np.full((len(features), 0), -1), np.concatenate([active_tokens, promoted.promoted], 1)),
    }
    sigs = Signatures(
        SignatureTable(
            lens, dictionary.name, dictionary.layer, features, ids, np.zeros(ids.shape), ids, np.zeros(ids.shape)
        )
        for lens, ids in tables.items()
    )
    result = evaluate(model, [dictionary], sigs, windows, prefix_tokens=prefixes, prefix_mask=mask, options=options)
    by = {(r["lens"], r["feature"]): r for r in result.rows}
    assert (top.active.sum(1) >= 5).any(), "degenerate test: no feature has enough active contexts"
    for f, feature in enumerate(features):
        enough = top.active[f].sum() >= 5
        for lens, expect_in, expect_out in (
            ("oracle_input", 1.0, None),
            ("oracle_output", None, 1.0),
            ("neither", 0.0, 0.0),
        ):
            row = by[(lens, int(feature))]
            if expect_in is not None:
                assert (row["input_score"] == expect_in) if enough else np.isnan(row["input_score"])
            if expect_out is not None:
                assert row["output_score"] == expect_out
    assert {s.lens for s in result.overall} == set(tables)


def test_require_contexts_keeps_the_first_features_that_pass_in_the_given_order(gpt2):
    """The authors' sampler: features with fewer than `min_contexts` active contexts get no row;
    with `max_features`, the first passing ones in the candidate order are kept."""
    model, dictionary, windows, prefixes, mask = gpt2
    features = np.arange(12)
    (top,) = top_contexts(model, [dictionary], [features], windows, n_top=3, sequences_per_chunk=8)
    passing = features[top.active.sum(1) >= 3]
    assert 2 <= len(passing) < len(features), "degenerate test: need some features to pass and some to fail"
    order = np.asarray([*passing[::-1], *np.setdiff1d(features, passing)])  # candidates, best last-first
    ids = np.tile(np.arange(25), (len(features), 1))
    sigs = Signatures(
        [
            SignatureTable(
                "lens", dictionary.name, dictionary.layer, features, ids, np.zeros(ids.shape), ids, np.zeros(ids.shape)
            )
        ]
    )
    options = EvaluationOptions(k=25, min_contexts=3, sequences_per_chunk=8, require_contexts=True, max_features=2)
    result = evaluate(
        model,
        [dictionary],
        sigs,
        windows,
        prefix_tokens=prefixes,
        prefix_mask=mask,
        options=options,
        feature_order={(dictionary.name, dictionary.layer): order},
    )
    assert sorted(r["feature"] for r in result.rows) == sorted(passing[::-1][:2].tolist())
    assert all(r["active_contexts"] >= 3 for r in result.rows)
