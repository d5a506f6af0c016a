"""Responses from the first-order operators equal a direct per-feature JVP of each block's two modules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernel_fixtures import setup
from qlens_jax.channels import channel_data, destination_blocks
from qlens_jax.lens import transport


@pytest.fixture(scope="module")
def tiny():
    _, model, dictionaries, tokens, mask = setup("gpt2")
    return model, dictionaries, tokens, mask


def test_destinations_are_whole_blocks_after_the_write_point():
    # 3 blocks: resid_pre[1] is point 2, resid_mid[1] point 3, resid_post[1] point 4.
    assert destination_blocks(2, 3) == [1, 2]
    assert destination_blocks(3, 3) == [2]
    assert destination_blocks(4, 3) == [2]
    assert destination_blocks(6, 3) == []


def test_responses_equal_direct_jvp(tiny):
    model, dictionaries, tokens, mask = tiny
    data = channel_data(model, dictionaries, tokens, mask, n_features=6, seed=3)
    n_layers, d = model.config.n_layers, model.config.d_model
    assert [(p.source, p.destination) for p in data.pairs] == [(0, 1), (0, 2), (1, 2), (2, 2), (3, 2)]
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    inputs = transport.clean_module_inputs(model, tokens, mask)
    n_valid = float(mask.sum())

    @jax.jit
    def direct(v, block):
        """Mean over valid positions of J_attn(t) v + J_mlp(t) v, v at every valid position."""
        zeros = jnp.zeros((2 * n_layers, d), jnp.float32)
        tangent = zeros.at[2 * block].set(v).at[2 * block + 1].set(v)
        _, out = jax.jvp(lambda deltas: transport.module_outputs(model, inputs, mask, deltas), (zeros,), (tangent,))
        sums = transport.masked_sum(out, mask)
        return (sums[2 * block] + sums[2 * block + 1]) / n_valid

    for pair, Y in zip(data.pairs, data.responses):
        queries = data.sources[pair.source].queries
        assert Y.shape == queries.shape
        expected = np.stack([np.asarray(direct(jnp.asarray(v), pair.destination)) for v in queries])
        scale = np.abs(expected).max()
        assert scale > 0
        np.testing.assert_allclose(Y, expected, rtol=1e-4, atol=1e-5 * scale)
