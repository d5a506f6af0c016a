"""The output score's steering under the authors' conventions, against the authors' own code
(`data/write_feature_sample.py` of HYU-NLP/query-lens, run on TransformerLens with a sae_lens
SAE): the KL over every prefix position with the error term dropped, their integer search of
alpha, and greedy steered generation with the clean distribution taken on the steered context.

The model is a tiny GPT-2 (word-level tokenizer, BOS = EOS = the last id); the prefixes all have
the same length, so that neither side pads (the authors' KL counts pad positions unless the pad
id is 0, and drops positions whose token id is 0: docs/evaluation.md)."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import converters
from benchmarks.authors import load_transformer_lens, save_word_tokenizer
from qlens_jax.evaluation.output_score import Promoted, output_score_intervals, output_scores
from qlens_jax.evaluation.steering import calibrate_alphas, rank_changes, rank_changes_resampled, steered_generations
from tiny_models import VOCAB, build_hf_model

LAYER, FEATURES, TARGETS = 1, (3, 11), (0.25, 0.5, -0.25)
PROMPTS = ["t5 t17 t33 t8", "t40 t2 t71 t19", "t9 t64 t23 t55", "t88 t31 t7 t12"]
STEPS = 5
# Sampling needs more prefixes for a useful interval: 24 of four random words (no BOS, no id 0).
ALPHA_SAMPLED = 2.0  # weak enough that the sampled S differs from the greedy one
SAMPLED_PROMPTS = [
    " ".join(f"t{i}" for i in row) for row in np.random.default_rng(3).integers(1, VOCAB - 1, (24, 4)).tolist()
]
# TransformerLens deprecates HookedTransformer, which the authors' code is written for.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def worlds(tmp_path_factory, authors_repo):
    import sae_lens
    import torch
    from sae_lens.saes.sae import SAEMetadata

    root = tmp_path_factory.mktemp("paper_steering")
    hf = build_hf_model("gpt2", seed=4)
    hf.config.n_ctx = hf.config.n_positions
    hf.save_pretrained(root / "model")
    save_word_tokenizer(VOCAB, root / "model")
    d, n = hf.config.n_embd, 16
    config = sae_lens.StandardSAEConfig(
        d_in=d,
        d_sae=n,
        dtype="float32",
        device="cpu",
        apply_b_dec_to_input=False,
        metadata=SAEMetadata(model_name="tiny", hook_name=f"blocks.{LAYER}.hook_resid_post"),
    )
    sae = sae_lens.StandardSAE(config)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d, n, generator=generator) / d**0.5)
        sae.W_dec.copy_(torch.randn(n, d, generator=generator) / d**0.5)
        sae.b_enc.copy_(0.1 * torch.randn(n, generator=generator))
        sae.b_dec.copy_(0.1 * torch.randn(d, generator=generator))
    sae.save_model(str(root / "sae"))

    grad = torch.is_grad_enabled()
    sys.path.insert(0, str(authors_repo))
    try:
        import data.write_feature_sample as authors
        from util import Feature
    finally:
        sys.path.remove(str(authors_repo))
        torch.set_grad_enabled(grad)  # the module turns gradients off for the whole process
    tl = load_transformer_lens(str(root / "model"), "cpu")
    torch.set_grad_enabled(grad)
    ours = converters.load_model(root / "model")
    dictionary = converters.load_dictionary(root / "sae", ours)
    return authors, Feature, tl, sae_lens.SAE.load_from_disk(str(root / "sae"), device="cpu"), ours, dictionary


def _prefixes(tl):
    tokens = tl.to_tokens(PROMPTS).numpy()  # BOS prepended, as the authors' calibration runs
    assert (tokens[:, 0] == VOCAB - 1).all() and (tokens[:, 1:] != VOCAB - 1).all() and (tokens != 0).all()
    return jnp.asarray(tokens, jnp.int32), jnp.ones(tokens.shape, bool)


def _authors(authors, feature_cls, tl, sae, feature, fn, *args, **kwargs):
    import torch

    with torch.no_grad():
        return fn(
            tl,
            PROMPTS,
            feature_cls(model_id="tiny", feature=feature, layer=LAYER, type="sae"),
            *args,
            sae=sae,
            **kwargs,
        )


def test_integer_search_and_kl_equal_the_authors(worlds):
    authors, feature_cls, tl, sae, model, dictionary = worlds
    tokens, mask = _prefixes(tl)
    ours = calibrate_alphas(
        model,
        dictionary,
        tokens,
        mask,
        jnp.asarray(FEATURES),
        jnp.asarray(TARGETS),
        kl_positions="all",
        search="integer",
        error_term=False,
    )
    for i, feature in enumerate(FEATURES):
        for t, target in enumerate(TARGETS):
            expected = _authors(
                authors, feature_cls, tl, sae, feature, authors._get_activation_for_kl, abs(target), neg=target < 0
            )
            assert float(ours.alphas[i, t]) == expected
            kl = _authors(authors, feature_cls, tl, sae, feature, authors._get_kl_div, expected)
            np.testing.assert_allclose(float(ours.kl[i, t]), kl, rtol=2e-4)
    assert ours.reached.any()  # the search found targets, not only interval ends


def test_greedy_generation_ranks_equal_the_authors(worlds):
    import torch

    authors, feature_cls, tl, sae, model, dictionary = worlds
    tokens, mask = _prefixes(tl)
    alpha, feature = 37.0, FEATURES[0]
    with torch.no_grad():
        _, payload = authors._hooked_gen(
            tl.to_tokens(PROMPTS, padding_side="left"),
            tl,
            feature_cls(model_id="tiny", feature=feature, layer=LAYER, type="sae"),
            n=STEPS,
            value=alpha,
            temperature=0.0,
            sae=sae,
            return_gen_probs=True,
        )
    assert (
        payload["gen_tokens"].shape[1] == STEPS and (payload["gen_tokens"] != VOCAB - 1).all()
    )  # no EOS: no early stop
    expected = (payload["clean_mean_ranks"] - payload["steered_mean_ranks"]).numpy() / VOCAB
    # Their generation hook leaves prefix tokens equal to the pad id unsteered: here (pad = BOS) the BOS.
    changes = rank_changes(
        model,
        dictionary,
        tokens,
        mask,
        jnp.asarray([feature]),
        jnp.asarray([[alpha]]),
        jax.random.key(0),
        generate_tokens=STEPS,
        temperature=0.0,
        error_term=False,
        unsteered=tokens == tl.tokenizer.pad_token_id,
    )
    ours = np.asarray(changes[0]) * (VOCAB - 1) / VOCAB  # rank percentiles are scaled by V - 1, theirs by V
    np.testing.assert_allclose(ours, expected, atol=1e-6)
    generated = steered_generations(
        model,
        dictionary,
        tokens,
        mask,
        jnp.asarray([feature]),
        jnp.asarray([[alpha]]),
        jax.random.key(0),
        generate_tokens=STEPS,
        temperature=0.0,
        unsteered=tokens == tl.tokenizer.pad_token_id,
    )  # the continuations shown in Fig. 4 and by qlens serve
    width = tokens.shape[1]
    np.testing.assert_array_equal(np.asarray(generated[0, 0, :, width : width + STEPS]), payload["gen_tokens"].numpy())
    assert set(np.argsort(-ours)[:10]) == set(np.argsort(-expected)[:10])
    assert np.abs(expected).max() > 0.05  # the steering moved ranks


def test_sampled_output_score_of_the_authors_lies_in_the_interval_the_run_reports(worlds):
    """Under sampling (T = 0.75) the two O(T) differ by their draws only: the authors' (torch's
    generator, seed 0) must lie in the percentile-bootstrap interval over prefixes that
    `promoted_tokens` / `evaluate` report for ours. T is each feature's greedy S, so that O(T)
    is neither 0 nor 1 by construction."""
    import torch

    authors, feature_cls, tl, sae, model, dictionary = worlds
    prompt_tokens = tl.to_tokens(SAMPLED_PROMPTS)
    tokens, mask = jnp.asarray(prompt_tokens.numpy(), jnp.int32), jnp.ones(prompt_tokens.shape, bool)
    unsteered = tokens == tl.tokenizer.pad_token_id
    features, alphas, size = jnp.asarray(FEATURES), jnp.full((len(FEATURES), 1), ALPHA_SAMPLED), 30
    steering = dict(generate_tokens=STEPS, error_term=False, unsteered=unsteered)
    greedy = rank_changes(
        model, dictionary, tokens, mask, features, alphas, jax.random.key(0), temperature=0.0, **steering
    )
    token_sets = np.asarray(jax.lax.top_k(greedy, size)[1])
    draws = np.random.default_rng(0).integers(0, len(SAMPLED_PROMPTS), (200, len(SAMPLED_PROMPTS)))
    weights = np.stack([np.bincount(d, minlength=len(SAMPLED_PROMPTS)) for d in draws]) / len(SAMPLED_PROMPTS)
    changes, resampled = rank_changes_resampled(
        model, dictionary, tokens, mask, features, alphas, jax.random.key(1), jnp.asarray(weights, jnp.float32),
        size, temperature=0.75, **steering,
    )  # fmt: skip
    promoted = Promoted(
        np.asarray(FEATURES),
        np.asarray([0.25]),
        *(np.asarray(alphas) for _ in range(3)),
        np.asarray(jax.lax.top_k(changes, size)[1]),
        np.zeros((len(FEATURES), size)),
        np.asarray(resampled),
    )
    ours = output_scores(promoted, token_sets)
    low, high = output_score_intervals(promoted, token_sets)
    torch.manual_seed(0)
    for f, feature in enumerate(FEATURES):
        with torch.no_grad():
            _, payload = authors._hooked_gen(
                prompt_tokens,
                tl,
                feature_cls(model_id="tiny", feature=feature, layer=LAYER, type="sae"),
                n=STEPS,
                value=ALPHA_SAMPLED,
                temperature=0.75,
                sae=sae,
                return_gen_probs=True,
            )
        theirs_s = np.argsort(-(payload["clean_mean_ranks"] - payload["steered_mean_ranks"]).numpy())[:size]
        theirs = len(set(theirs_s) & set(token_sets[f])) / size
        assert low[f] <= ours[f] <= high[f] and high[f] - low[f] <= 0.5, (low[f], ours[f], high[f])
        assert low[f] <= theirs <= high[f], (feature, theirs, low[f], high[f])
        assert 0 < theirs < 1 or 0 < ours[f] < 1  # the sampling moved S away from the greedy one


def test_the_authors_prefix_file_is_read_and_bad_files_are_named(authors_repo, tmp_path):
    import json

    from qlens_jax.errors import InputError
    from qlens_jax.evaluation.prefixes import read_prefixes

    theirs = authors_repo / "data" / "generation_prompts.json"
    prefixes = read_prefixes(theirs)
    assert prefixes == json.loads(theirs.read_text()) and len(prefixes) > 20 and prefixes[0] == "Findings show that"
    lines = tmp_path / "p.txt"
    lines.write_text("One\n\n  Two  \n")
    assert read_prefixes(lines) == ["One", "Two"]
    for content, message in [
        ('{"a": 1}', "expected a JSON list"),
        ('["ok", 3]', "entry 1 is 3"),
        ('["ok", " "]', "entry 1"),
        ("[]", "holds no prefix"),
        ("[1,", "not valid JSON"),
    ]:
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(InputError, match=message):
            read_prefixes(bad)
