"""FLOP accounting of compiled steps (`benchmarks.roofline`) at tiny size: the jaxpr count
agrees with XLA's cost analysis where there is no loop, multiplies loop bodies by their trip
counts where XLA counts them once, and splits a real sweep into attention and MLP."""

import jax
import jax.numpy as jnp
import pytest

from benchmarks import builders, roofline, sizes


def test_loop_free_step_agrees_with_xla_cost_analysis():
    a, b = jnp.ones((96, 64)), jnp.ones((64, 80))
    step = jax.jit(lambda x, y: jnp.maximum(x @ y, 0.0) @ y.T)
    cost = roofline.step_cost(step, a, b)
    matmuls = 2 * 96 * 64 * 80 * 2
    assert cost["xla_flops"] == pytest.approx(matmuls, rel=0.02)
    assert cost["flops"] == pytest.approx(cost["xla_flops"], rel=0.02)


def test_loop_bodies_count_times_their_trip_count():
    a = jnp.ones((64, 64))
    once = jax.jit(lambda x: x @ a)
    looped = jax.jit(lambda x: jax.lax.scan(lambda c, _: (c @ a, None), x, None, length=10)[0])
    mapped = jax.jit(lambda x: jax.lax.map(lambda r: r @ a, x, batch_size=4))
    single = roofline.step_cost(once, a)["flops"]
    looped_cost = roofline.step_cost(looped, a)
    assert looped_cost["flops"] == pytest.approx(10 * single, rel=1e-3)
    assert looped_cost["xla_flops"] == pytest.approx(single, rel=1e-3)  # XLA: the body once
    assert roofline.step_cost(mapped, jnp.ones((16, 64)))["flops"] == pytest.approx(2 * 16 * 64 * 64, rel=1e-3)


@pytest.fixture(scope="module")
def tiny_model():
    return builders.jax_model(builders.hf_gpt2(sizes.GPT2_TINY, 0))


def test_sweep_steps_are_recorded_not_run_and_split_into_attention_and_mlp(tiny_model):
    tokens, mask = builders.token_sample(tiny_model.config.vocab_size, 2, 16, 0)
    steps = roofline.record_sweep_steps(tiny_model, tokens, mask, sweeps=("value", "key"), memory_budget_gb=4.0)
    assert steps and all(s["calls"] >= 1 for s in steps)
    for step in steps:
        split = step["split"]
        assert sum(split.values()) == pytest.approx(step["flops"], rel=1e-12)
        assert split["attention"] > 0 and split["mlp"] > 0
        assert split["other"] < 0.05 * step["flops"]  # nearly everything is attributed to a module
        # XLA counts each loop body once: the sweep's loops make the whole larger
        assert step["flops"] > step["xla_flops"] > 0
    # the MLP share: forming Jacobians (d x d_mlp x d per position) and applying them
    # (d x d per position and basis vector) is a known amount of the whole
    c, n = tiny_model.config, int(mask.sum())
    jacobians = n * c.n_layers * 2 * c.d_model * c.d_mlp * c.d_model
    assert sum(s["split"]["mlp"] * s["calls"] for s in steps) >= jacobians


def test_readout_step_is_loop_free_and_dominated_by_the_vocabulary_product(tiny_model):
    tokens, mask = builders.token_sample(tiny_model.config.vocab_size, 2, 16, 0)
    c = tiny_model.config
    for side in ("value", "key"):
        cost = roofline.readout_step_cost(tiny_model, tokens, mask, side, rows=256)
        products = 2 * 256 * c.d_model * c.vocab_size + 2 * 256 * c.d_model * c.d_model
        assert products <= cost["flops"] < 1.3 * products
        assert cost["xla_flops"] == pytest.approx(cost["flops"], rel=0.2)


def test_counting_without_compiling_gives_the_same_jaxpr_count(tiny_model):
    tokens, mask = builders.token_sample(tiny_model.config.vocab_size, 2, 16, 0)
    kwargs = dict(sweeps=("value", "key"), memory_budget_gb=4.0)
    compiled = roofline.record_sweep_steps(tiny_model, tokens, mask, **kwargs)
    traced = roofline.record_sweep_steps(tiny_model, tokens, mask, xla=False, **kwargs)
    assert [s["flops"] for s in traced] == [s["flops"] for s in compiled]
    assert all(s["xla_flops"] is None for s in traced)
