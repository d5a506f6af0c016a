"""`exact_norm_jacobian` for SAEs that normalize their input per token (OpenAI TopK SAEs'
`layer_norm`): the key is the gradient of the pre-activation itself, through that norm."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import qlens_jax
from kernel_fixtures import FEATURES, setup
from qlens_jax.dictionaries import Dictionary
from qlens_jax.models import block_forward
from qlens_jax.readout import centered_embeddings


@pytest.fixture(scope="module")
def normalizing_sae():
    hf, model, _, tokens, mask = setup("gpt2")
    rng = np.random.default_rng(7)
    d, n = model.config.d_model, 40
    sae = Dictionary(
        W_enc=jnp.asarray(rng.normal(size=(d, n)), jnp.float32),
        b_enc=jnp.asarray(rng.normal(size=n), jnp.float32),
        W_dec=jnp.asarray(rng.normal(size=(n, d)), jnp.float32),
        b_dec=jnp.asarray(rng.normal(size=d), jnp.float32),
        layer=1,
        site_in="resid_post",
        site_out="resid_post",
        kind="sae",
        name="resid-post-oai",
        activation="topk",
        k=4,
        input_norm="layer_norm",
        apply_b_dec_to_input=True,
    )
    return model, sae, tokens, mask


def _gradient_of_mean_pre_activation(model, sae, tokens, mask, feature):
    """d/d(delta at every valid position of resid_pre[0]) of the mean pre-activation at the SAE's input."""
    m = jnp.asarray(mask)[..., None]

    def mean_pre(delta):
        def one(tok, msk, dlt):
            h = model.embed(tok) + dlt * msk[:, None]
            for layer in range(sae.layer + 1):
                block, meta = model.block(layer)
                h, _ = block_forward(block, meta, h, msk)
            return sae.pre_activation(h)[:, feature]

        pre = jax.vmap(one, in_axes=(0, 0, None))(jnp.asarray(tokens), jnp.asarray(mask), delta)
        return (pre * m[..., 0]).sum() / m.sum()

    return jax.grad(mean_pre)(jnp.zeros(model.config.d_model))


@pytest.mark.parametrize("path", ["per-feature", "dense"])
def test_exact_key_is_the_gradient_of_the_pre_activation(normalizing_sae, path):
    model, sae, tokens, mask = normalizing_sae
    table = qlens_jax.query_lens(
        model,
        [sae],
        tokens,
        mask,
        lenses=["query_lens_key"],
        features=FEATURES,
        k=8,
        path=path,
        exact_norm_jacobian=True,
        sequences_per_chunk=2,
    )[0]
    key_matrix = centered_embeddings(model, jnp.asarray(tokens), jnp.asarray(mask))
    for row, feature in enumerate(FEATURES):
        w = _gradient_of_mean_pre_activation(model, sae, tokens, mask, feature)
        scores = np.asarray(key_matrix @ w)
        top = np.argsort(-scores)[:8]
        np.testing.assert_array_equal(table.top_ids[row], top)
        np.testing.assert_allclose(table.top_scores[row], scores[top], rtol=1e-4, atol=1e-6)


def test_default_reads_the_raw_encoder_column(normalizing_sae):
    model, sae, tokens, mask = normalizing_sae
    common = dict(lenses=["query_lens_key"], features=FEATURES, k=8, path="per-feature", sequences_per_chunk=2)
    exact = qlens_jax.query_lens(model, [sae], tokens, mask, exact_norm_jacobian=True, **common)[0]
    raw = qlens_jax.query_lens(model, [sae], tokens, mask, **common)[0]
    assert not np.allclose(exact.top_scores, raw.top_scores, rtol=1e-2)
