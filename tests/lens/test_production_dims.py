"""At GPT-2-small dimensions (where XLA's CPU backend was seen miscompiling vmapped VJPs while
tiny models were exact), rows of the dense operators, computed in vmapped batches under jit,
equal single un-batched JVP/VJP results to 1e-5 relative."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

from converters import model_config_from_hf
from qlens_jax.lens import operators, transport
from qlens_jax.lens.points import n_points
from qlens_jax.models import init_transformer

RTOL = 1e-5
BASIS = jnp.asarray([0, 383, 767])


@pytest.fixture(scope="module")
def gpt2_small():
    config = model_config_from_hf(transformers.GPT2Config().to_dict())
    model = init_transformer(config, jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens = jnp.asarray(rng.integers(0, config.vocab_size, size=(2, 96)), jnp.int32)
    mask = jnp.ones(tokens.shape, bool).at[1, 80:].set(False)
    return model, tokens, mask


def _relative(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b, axis=-1) / np.linalg.norm(b, axis=-1)


def test_value_rows_equal_single_vjps(gpt2_small):
    model, tokens, mask = gpt2_small
    rows, _ = operators.value_sweep_chunk(model, tokens, mask, BASIS, len(BASIS))  # [P, r, d]
    zeros = jnp.zeros((n_points(model.config.n_layers), model.config.d_model))
    _, pull = jax.vjp(lambda deltas: transport.final_from_probes(model, tokens, mask, deltas), zeros)
    for r, i in enumerate(np.asarray(BASIS)):
        cotangent = jnp.where(mask[..., None], jax.nn.one_hot(i, model.config.d_model), 0.0)
        single = pull(cotangent)[0]  # [P, d]
        assert _relative(rows[:, r], single).max() < RTOL


def test_key_rows_equal_single_jvps(gpt2_small):
    model, tokens, mask = gpt2_small
    rows, _ = operators.key_sweep_chunk(model, tokens, mask, BASIS, len(BASIS))  # [KP, r, d]
    stream = lambda d0: transport.masked_sum(transport.points_from_embedding(model, tokens, mask, d0), mask)
    zeros = jnp.zeros((*tokens.shape, model.config.d_model))
    for r, j in enumerate(np.asarray(BASIS)):
        tangent = jnp.where(mask[..., None], jax.nn.one_hot(j, model.config.d_model), 0.0)
        _, single = jax.jvp(stream, (zeros,), (tangent,))
        assert _relative(rows[:, r], single).max() < RTOL


def test_first_order_columns_equal_single_jvps(gpt2_small):
    model, tokens, mask = gpt2_small
    valid, every, *_ = operators.first_order_sweep_chunk(model, tokens, mask, BASIS, len(BASIS))  # [M, d, r]
    inputs = transport.clean_module_inputs(model, tokens, mask)
    n_modules = 2 * model.config.n_layers
    outputs = lambda deltas: transport.masked_sum(transport.module_outputs(model, inputs, mask, deltas), mask)
    zeros = jnp.zeros((n_modules, model.config.d_model))
    for r, j in enumerate(np.asarray(BASIS)):
        tangent = jnp.broadcast_to(jax.nn.one_hot(j, model.config.d_model), zeros.shape)
        _, single = jax.jvp(outputs, (zeros,), (tangent,))
        assert _relative(valid[:, :, r], single).max() < RTOL
