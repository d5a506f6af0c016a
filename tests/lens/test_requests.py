"""A bad request gets a clear error before anything is compiled."""

import numpy as np
import pytest

import qlens_jax
from kernel_fixtures import random_dictionary, setup
from qlens_jax.dictionaries import DictionaryError
from qlens_jax.lens import LensRequestError


@pytest.fixture(scope="module")
def gpt2():
    return setup("gpt2")


@pytest.fixture(autouse=True)
def nothing_compiles(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("work started before the request was validated")

    monkeypatch.setattr("qlens_jax.lens.api.transport_operators", fail)
    monkeypatch.setattr("qlens_jax.lens.plan.plan_chunks", fail)


def test_feature_out_of_range(gpt2):
    _, model, dictionaries, tokens, mask = gpt2
    with pytest.raises(LensRequestError, match="feature index 40 is out of range .* 40 features"):
        qlens_jax.query_lens(model, dictionaries, tokens, mask, features=[3, 40])


def test_dictionary_for_another_model(gpt2):
    _, model, _, tokens, mask = gpt2
    other = random_dictionary(model.config.d_model + 16, 0, "resid_post", "resid_post", "sae", 9)
    with pytest.raises(DictionaryError, match=str(model.config.d_model)):
        qlens_jax.query_lens(model, [other], tokens, mask)


def test_layer_out_of_range(gpt2):
    _, model, _, tokens, mask = gpt2
    deep = random_dictionary(model.config.d_model, model.config.n_layers, "resid_post", "resid_post", "sae", 9)
    with pytest.raises(DictionaryError, match="layer"):
        qlens_jax.query_lens(model, [deep], tokens, mask)


@pytest.mark.parametrize(
    "tokens, mask, message",
    [
        (np.zeros((0, 5), np.int32), None, "empty"),
        (np.ones((2, 5), np.int32), np.zeros((2, 5), bool), "empty"),
        (np.full((2, 5), 10_000), None, "token ids must lie in"),
        (np.ones((2, 5), np.int32), np.ones((2, 4), bool), "mask shape"),
        (np.ones((2, 5), np.int32), np.array([[0, 1, 1, 1, 1]] * 2, bool), "right padding"),
        (np.ones(5, np.int32), None, r"\[batch, seq\]"),
    ],
)
def test_bad_token_sample(gpt2, tokens, mask, message):
    _, model, dictionaries, _, _ = gpt2
    with pytest.raises(LensRequestError, match=message):
        qlens_jax.query_lens(model, dictionaries, tokens, mask)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(k=10_000), "k=10000"),
        (dict(k=0), "k=0"),
        (dict(lenses=["quer_lens_value"]), "unknown lens"),
        (dict(dtype="float16"), "dtype 'float16'"),
        (dict(path="fast"), "path 'fast'"),
    ],
)
def test_bad_options(gpt2, kwargs, message):
    _, model, dictionaries, tokens, mask = gpt2
    with pytest.raises(LensRequestError, match=message):
        qlens_jax.query_lens(model, dictionaries, tokens, mask, **kwargs)


@pytest.mark.parametrize("side,scale,refused", [("value", 1e9, False), ("value", 1e17, True), ("key", 1e17, True)])
def test_weights_that_would_overflow_the_readout(gpt2, side, scale, refused):
    """A value vector (W_dec row) or key vector (W_enc column) large enough to overflow the
    readout's float32 sums is refused before any work, naming the feature; a large one that
    fits passes; the check reads only the requested features."""
    import equinox as eqx

    _, model, _, tokens, mask = gpt2
    d = random_dictionary(model.config.d_model, 1, "resid_post", "resid_post", "sae", 9)
    if side == "value":
        d = eqx.tree_at(lambda x: x.W_dec, d, d.W_dec.at[5].set(scale))
    else:
        d = eqx.tree_at(lambda x: x.W_enc, d, d.W_enc.at[:, 5].set(-scale))
    lens = f"query_lens_{side}"
    if not refused:
        with pytest.raises(AssertionError, match="work started"):  # past the checks, into planning
            qlens_jax.plan_request(model, [d], tokens, mask, lenses=(lens,))
        return
    what = "W_dec row" if side == "value" else "W_enc column"
    with pytest.raises(DictionaryError, match=f"feature 5's {what} holds values up to 1e\\+17 .*{lens}.*overflows"):
        qlens_jax.plan_request(model, [d], tokens, mask, lenses=(lens,))
    with pytest.raises(AssertionError, match="work started"):
        qlens_jax.plan_request(model, [d], tokens, mask, lenses=(lens,), features=[4, 6])


def test_resid_mid_of_a_parallel_block():
    """GPT-NeoX's parallel blocks have no resid_mid: refused by name with the sites they have."""
    import converters
    from tiny_models import build_hf_model

    model = converters.load_model(build_hf_model("neox-parallel"))
    tokens = np.arange(3, 11, dtype=np.int32).reshape(2, 4)
    mid = random_dictionary(model.config.d_model, 1, "resid_mid", "resid_mid", "sae", 9)
    with pytest.raises(DictionaryError, match="resid_mid.*parallel.*resid_pre, resid_post, attn_out, z, mlp_out"):
        qlens_jax.query_lens(model, [mid], tokens)
