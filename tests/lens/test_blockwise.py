"""Block-major sweeps (explicit MLP Jacobians, all basis vectors at once) give the operators of
the basis-major sweeps, and sweeps restricted to the points a request needs give the same rows
there and refuse to be read elsewhere."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import qlens_jax
from converters import model_config_from_hf
from kernel_fixtures import setup
from qlens_jax.lens import LensRequestError, blockwise, transport_operators
from qlens_jax.lens.points import n_key_points, n_points, point_at, row
from qlens_jax.models import MLP, ResidualMLP, init_transformer, mlp_residual
from qlens_jax.models.mlp import autodiff_cost

# A plain GELU MLP with LayerNorm, a gated SiLU MLP with RMSNorm and biases, Gemma-3's
# post-norms with (1 + w) RMSNorm, Qwen3-MoE's routed experts beside dense MLPs, GPT-NeoX's parallel block, and
# Gemma-2 / Gemma-1 / Mistral: every shape of MLP Jacobian and block the block-major sweep forms.
ARCHITECTURES = [
    "gpt2",
    "llama-gqa2-llama3rope",
    "gemma3-sliding",
    "qwen3moe-mixed",
    "neox-parallel",
    "gemma2-softcaps",
    "gemma-geglu",
    "mistral-sliding",
    "gptoss-every-key",
    "qwen35-hybrid",
    "qwen35moe-hybrid",
]


@pytest.fixture(scope="module", params=ARCHITECTURES)
def both_orders(request):
    _, model, dictionaries, tokens, mask = setup(request.param)
    run = lambda order: transport_operators(
        model, tokens, mask, sweeps=("value", "key"), sweep_order=order, with_input_norms=True
    )
    return model, dictionaries, tokens, mask, run("basis"), run("blockwise")


def test_one_step_for_both_sweeps_equals_separate_sweeps(monkeypatch):
    """With both sides requested the block-major sweeps run as one step that forms each MLP
    Jacobian once (the value sweep reuses the key sweep's), and give the separate sweeps' rows."""
    from qlens_jax.lens import operators

    _, model, _, tokens, mask = setup("gpt2")
    names, original = [], operators.sharded_sweep
    monkeypatch.setattr(operators, "sharded_sweep", lambda name, *a, **k: names.append(name) or original(name, *a, **k))
    options = dict(sweep_order="blockwise", with_input_norms=True, value_from_point=2, key_to_point=5)
    together = transport_operators(model, tokens, mask, sweeps=("value", "key"), **options)
    assert names == ["value+key"]
    value = transport_operators(model, tokens, mask, sweeps=("value",), **options)
    key = transport_operators(model, tokens, mask, sweeps=("key",), **options)
    assert names[1:] == ["value", "key"]
    assert (together.value_from_point, together.key_to_point) == (value.value_from_point, key.key_to_point) == (2, 6)
    _assert_rows_close(together.value, value.value, rtol=1e-6)
    _assert_rows_close(together.key, key.key, rtol=1e-6)


def _assert_rows_close(actual, expected, rtol=2e-5):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(np.isfinite(actual), finite)
    scale = np.abs(expected[finite]).max()
    np.testing.assert_allclose(actual[finite], expected[finite], rtol=0, atol=rtol * scale)


def test_blockwise_operators_equal_basis_major(both_orders):
    model, _, _, _, basis_major, block_major = both_orders
    n_layers = model.config.n_layers
    assert block_major.value.shape == basis_major.value.shape == (n_points(n_layers), *block_major.value.shape[1:])
    assert block_major.key.shape == basis_major.key.shape
    assert block_major.key.shape[0] > n_key_points(n_layers)  # the input-normalization points too
    _assert_rows_close(block_major.value, basis_major.value)
    _assert_rows_close(block_major.key, basis_major.key)
    # Not trivially equal: the operators are far from the identity.
    assert np.abs(np.asarray(block_major.value[0]) - np.eye(model.config.d_model)).max() > 0.1


def test_mlp_jacobian_equals_autodiff(both_orders):
    model, *_ = both_orders
    block, _ = model.block(0)
    h = jax.random.normal(jax.random.key(3), (model.config.d_model,)) * 2.0
    expected = jax.jacfwd(lambda x: mlp_residual(block, x))(h).T  # row convention
    np.testing.assert_allclose(
        blockwise.mlp_jacobian(block, h), expected, rtol=1e-5, atol=1e-5 * float(jnp.abs(expected).max())
    )


def test_restricted_sweeps_keep_the_rows_they_cover(both_orders):
    model, dictionaries, tokens, mask, full, _ = both_orders
    n_layers = model.config.n_layers
    value_from, key_to = 3, 3  # resid_mid[1]: value needs blocks 1.., key blocks 0..1
    part = transport_operators(
        model,
        tokens,
        mask,
        sweeps=("value", "key"),
        sweep_order="blockwise",
        with_input_norms=True,
        value_from_point=value_from,
        key_to_point=key_to,
    )
    assert part.value_from_point == 2 and part.key_to_point == 4
    for p in range(n_points(n_layers)):
        if part.covers("value", point_at(p, n_layers), n_layers):
            _assert_rows_close(part.value[p], full.value[p])
        else:
            assert p < 2 and not np.asarray(part.value[p]).any()
    covered = [p for p in range(full.key.shape[0]) if part.covers("key", point_at(p, n_layers), n_layers)]
    assert set(covered) == {p for p in range(full.key.shape[0]) if row(point_at(p, n_layers).residual, n_layers) <= 4}
    assert len(covered) < full.key.shape[0]
    for p in covered:
        _assert_rows_close(part.key[p], full.key[p])


def test_query_lens_refuses_operators_without_the_requested_rows(both_orders):
    model, dictionaries, tokens, mask, *_ = both_orders
    part = transport_operators(model, tokens, mask, sweeps=("value",), sweep_order="blockwise", value_from_point=4)
    low = [d for d in dictionaries if d.layer == 0]
    with pytest.raises(LensRequestError, match="no value rows for dictionary 0"):
        qlens_jax.query_lens(model, low, tokens, mask, lenses=("query_lens_value",), path="dense", operators=part)


def test_query_lens_sweeps_only_the_blocks_it_needs(monkeypatch):
    """A request for the deepest dictionary alone sweeps values from its write point and keys up
    to its read point, and its signatures equal those from full operators."""
    from qlens_jax.lens import api

    _, model, dictionaries, tokens, mask = setup("gpt2")
    deepest = [max(dictionaries, key=lambda d: (d.layer, d.site_out == "resid_post"))]
    kwargs = dict(lenses=("query_lens_value", "query_lens_key"), path="dense")
    full = transport_operators(model, tokens, mask, sweeps=("value", "key"), sweep_order="basis")
    expected = qlens_jax.query_lens(model, deepest, tokens, mask, operators=full, **kwargs)
    computed, original = [], api.transport_operators
    spy = lambda *args, **kw: computed.append(original(*args, **kw)) or computed[-1]
    monkeypatch.setattr(api, "transport_operators", spy)
    got = qlens_jax.query_lens(model, deepest, tokens, mask, **kwargs)
    assert computed[0].value_from_point > 0  # the blocks before the write point were skipped
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a.top_ids, b.top_ids)
        np.testing.assert_allclose(a.top_scores, b.top_scores, rtol=1e-5, atol=1e-6)


def test_sweep_order_choice():
    config = model_config_from_hf(transformers.GPT2Config().to_dict())
    assert blockwise.worth_it(config, 768)  # whole basis on one device: 5 d^3 instead of 8 d^3
    assert not blockwise.worth_it(config, 96)  # basis split over 8 devices: forming Q dominates
    model = jax.eval_shape(lambda: init_transformer(config, jax.random.key(0)))
    assert blockwise.sequences_that_fit(model, 256, 768, 8.0) >= 1
    assert blockwise.sequences_that_fit(model, 1024, 768, 2.0) == 0
    # Keeping 12 blocks' Jacobians for the value sweep (7 GiB at 256 tokens) needs a larger budget.
    assert blockwise.sequences_that_fit(model, 256, 768, 8.0, kept_blocks=12) == 0
    assert blockwise.sequences_that_fit(model, 256, 768, 16.0, kept_blocks=12) >= 1


def test_sweep_order_choice_with_routed_experts():
    """Qwen3-30B-A3B: a basis vector through the forward pass meets all 128 experts, the
    Jacobian only the 8 chosen ones, so the block-major order pays even with the basis split
    over 16 devices."""
    config = model_config_from_hf(transformers.Qwen3MoeConfig(num_hidden_layers=4, norm_topk_prob=True).to_dict())
    assert (config.n_experts, config.experts_per_token, config.d_mlp) == (128, 8, 768)
    assert blockwise.worth_it(config, config.d_model // 16)
    dense = model_config_from_hf(
        transformers.Qwen3MoeConfig(num_hidden_layers=4, mlp_only_layers=[0, 1, 2, 3]).to_dict()
    )
    assert not blockwise.worth_it(dense, dense.d_model // 16)


def test_bad_sweep_options_name_the_option():
    _, model, _, tokens, mask = setup("gpt2")
    with pytest.raises(LensRequestError, match="sweep_order"):
        transport_operators(model, tokens, mask, sweeps=("value",), sweep_order="sideways")
    with pytest.raises(LensRequestError, match="key_to_point=99"):
        transport_operators(model, tokens, mask, sweeps=("key",), key_to_point=99)


@pytest.mark.parametrize("transpose", [False, True])
def test_per_position_products_equal_the_batched_product_of_accelerators(monkeypatch, transpose):
    """On CPU `apply_rowwise` loops over positions and `mlp_jacobians` forms one position per
    step; on accelerators both stay batched. The two give the same numbers."""
    tangents = jax.random.normal(jax.random.PRNGKey(0), (6, 2, 5, 8))
    q = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 8, 8))
    exact = np.einsum("nbsd,bsed->nbse" if transpose else "nbsd,bsde->nbse", np.float64(tangents), np.float64(q))
    on_cpu = blockwise.apply_rowwise(tangents, q, transpose)
    monkeypatch.setattr(blockwise, "is_cpu", lambda: False)
    batched = blockwise.apply_rowwise(tangents, q, transpose)
    np.testing.assert_allclose(on_cpu, exact, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batched, exact, rtol=1e-5, atol=1e-5)
    assert blockwise.token_chunk() == blockwise.TOKEN_CHUNK


def test_mlp_jacobians_do_not_depend_on_positions_per_step():
    """One position per step (CPU) and 16 (accelerators) form the same Jacobians."""
    _, model, _, tokens, mask = setup("gpt2")
    block, _ = model.block(0)
    h = jax.random.normal(jax.random.PRNGKey(2), (2, 5, model.config.d_model))
    assert blockwise.token_chunk() == blockwise.CPU_TOKEN_CHUNK
    np.testing.assert_allclose(
        blockwise.mlp_jacobians(block, h, 1), blockwise.mlp_jacobians(block, h, 16), rtol=1e-5, atol=1e-6
    )


class _AutodiffOnly(ResidualMLP):
    """A module that only gives its function and cost, as a mixture-of-experts MLP does: the
    sweeps take its Jacobian by autodiff."""

    inner: MLP

    def __call__(self, x):
        return self.inner(x)

    @staticmethod
    def cost(config):
        return autodiff_cost(config.d_model, 3 * config.d_model * config.d_mlp, 3 * config.d_mlp)


def test_a_module_without_an_explicit_jacobian_is_linearized_by_autodiff():
    """The MLP interface: the sweeps call `ResidualMLP.jacobian`, autodiff unless a module gives
    a cheaper product, and decide the order from its `cost` (Gemma-2: post-norms around it)."""
    _, model, _, tokens, mask = setup("gemma2-softcaps")
    options = dict(sweeps=("value", "key"), sweep_order="blockwise", with_input_norms=True)
    block_major = transport_operators(model, tokens, mask, **options)
    swapped = eqx.tree_at(lambda m: m.blocks.mlp, model, _AutodiffOnly(model.blocks.mlp))
    block, _ = swapped.block(1)
    h = jax.random.normal(jax.random.key(4), (model.config.d_model,)) * 2.0
    explicit = blockwise.mlp_jacobian(model.block(1)[0], h)
    np.testing.assert_allclose(
        blockwise.mlp_jacobian(block, h), explicit, rtol=0, atol=1e-5 * float(jnp.abs(explicit).max())
    )
    again = transport_operators(swapped, tokens, mask, **options)
    _assert_rows_close(again.value, block_major.value)
    _assert_rows_close(again.key, block_major.key)
    d, ff = model.config.d_model, model.config.d_mlp
    assert _AutodiffOnly.cost(model.config).form == d * 3 * d * ff > MLP.cost(model.config).form
