"""Module-output sites (`z`, `attn_out`, `mlp_out`) in the kernel: the operators both sweep
orders record equal the per-feature transports, the first-order hops at `z` equal their
per-feature versions, and the per-feature definitions equal float64 finite differences of the
forward pass (docs/definitions.md section 1b). On Gemma-3: post-norms, where `z` differs most, and a
`z` wider than `d_model` (64 against 48), where a mix-up of the two widths fails. (Every lens at
these sites on GPT-2, Llama and Qwen-3 too: tests/lens/test_parity_reference.py.)"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import converters
from qlens_jax.lens import LensRequestError, operators, per_feature, points as pts, transport
from qlens_jax.lens.points import Point
from tiny_models import build_hf_model, padded_batch

RTOL = 1e-4
SITES = (Point("z", 0), Point("attn_out", 1), Point("mlp_out", 1), Point("z", 2))


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module", params=["gemma3-sliding"])
def world(request):
    model = converters.load_model(build_hf_model(request.param))
    tokens, mask = padded_batch(model.config.vocab_size, batch=3, seq=9)
    rng = np.random.default_rng(0)
    vectors = {p: rng.normal(size=(3, pts.site_width(p, model.config))).astype(np.float32) for p in SITES}
    ops = {
        order: operators.transport_operators(model, tokens, mask, sites=SITES, sweep_order=order, sequences_per_chunk=2)
        for order in ("basis", "blockwise")
    }
    return model, jnp.asarray(tokens), jnp.asarray(mask), vectors, ops


def test_sweeps_record_module_outputs_as_the_per_feature_transports(world):
    model, tokens, mask, vectors, ops = world
    n, n_layers = float(mask.sum()), model.config.n_layers
    for point in SITES:
        v = jnp.asarray(vectors[point])
        key, _ = per_feature.site_key_chunk(model, tokens, mask, v, point, 3)
        for order, op in ops.items():
            assert relative_error(v @ op.operator("key", point, n_layers, model.config).T, key / n) < RTOL, (
                order,
                point,
            )
        if point.site == "z":
            value, _ = per_feature.z_value_chunk(model, tokens, mask, v, point.layer, 3)
            for order, op in ops.items():
                assert relative_error(v @ op.operator("value", point, n_layers, model.config).T, value / n) < RTOL, (
                    order,
                    point,
                )


def test_module_outputs_leave_the_residual_operators_unchanged(world):
    model, tokens, mask, _, ops = world
    plain = operators.transport_operators(model, tokens, mask, sweep_order="blockwise", sequences_per_chunk=2)
    for field in ("value", "key", "first_order", "first_order_all"):
        np.testing.assert_allclose(getattr(ops["blockwise"], field), getattr(plain, field), rtol=0, atol=1e-6)
    assert plain.value_at_sites.shape == (model.config.d_model, 0)
    z_width = model.config.n_heads * model.config.head_dim
    assert ops["blockwise"].key_at_sites.shape == (model.config.d_model, 2 * z_width + 2 * model.config.d_model)


def test_first_order_hops_at_z_equal_the_per_feature_hops(world):
    model, tokens, mask, vectors, ops = world
    n = float(mask.sum())
    for point in pts.value_sites(SITES):
        v = jnp.asarray(vectors[point])
        into = per_feature.z_hop_value_chunk(model, tokens, mask, v, point.layer, 3) / n
        np.testing.assert_array_less(relative_error(v @ ops["basis"].z_hop("value", point).T, into), RTOL)
        for mask_seed in (True, False):
            back = per_feature.z_hop_key_chunk(model, tokens, mask, v, point.layer, 3, mask_seed) / n
            assert relative_error(v @ ops["basis"].z_hop("key", point, mask_seed).T, back) < RTOL


def test_module_outputs_are_refused_outside_the_model(world):
    model, tokens, mask, *_ = world
    with pytest.raises(LensRequestError, match="module outputs"):
        operators.transport_operators(model, tokens, mask, sites=(Point("z", model.config.n_layers),))
    with pytest.raises(LensRequestError, match="module outputs"):
        operators.transport_operators(model, tokens, mask, sites=(Point("resid_mid", 0),))


def _float64(model):
    return jax.tree.map(lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, model)


def test_per_feature_transports_equal_float64_finite_differences(world):
    """One feature per site: the value side at `z` (through the output projection and any
    post-norm) and the key side at every module output, against central differences of the
    forward pass with the vector added at every valid position."""
    model, tokens, mask, vectors, _ = world
    eps, d = 1e-5, model.config.d_model
    with jax.enable_x64(True):
        wide = _float64(model)
        m = jnp.asarray(mask, jnp.float64)[..., None]
        deltas = jnp.zeros((pts.n_points(model.config.n_layers), d), jnp.float64)
        z_deltas = jnp.zeros((model.config.n_layers, model.config.n_heads * model.config.head_dim), jnp.float64)
        directions = jnp.concatenate([eps * jnp.eye(d), -eps * jnp.eye(d)])[:, None, None, :]
        columns = pts.site_columns(SITES, model.config)
        seeds = jnp.concatenate([jnp.asarray(vectors[p][0], jnp.float64) for p in SITES])

        @jax.jit
        @jax.vmap
        def site_sums(direction):
            """Per site, the sum over valid positions of <v, site value> with `direction` added to the embedding."""
            d0 = jnp.broadcast_to(direction, (*tokens.shape, d))
            values = transport.points_and_sites_from_embedding(wide, tokens, mask, d0, sites=SITES)[1]
            weighted = (values * m * seeds).sum((0, 1))
            return jnp.stack([weighted[columns[p]].sum() for p in SITES])

        sums = site_sums(directions)
        for i, point in enumerate(SITES):
            v = jnp.asarray(vectors[point][:1], jnp.float64)
            key, _ = per_feature.site_key_chunk(wide, tokens, mask, v, point, 1)
            assert relative_error(key[0], (sums[:d, i] - sums[d:, i]) / (2 * eps)) < 1e-6, point
            if point.site == "z":
                final = jax.jit(
                    lambda s: transport.final_from_probes(
                        wide, tokens, mask, deltas, z_deltas.at[point.layer].set(s * v[0])
                    )
                )
                fd = ((final(eps) - final(-eps)) / (2 * eps) * m).sum((0, 1))
                value, _ = per_feature.z_value_chunk(wide, tokens, mask, v, point.layer, 1)
                assert relative_error(value[0], fd) < 1e-6, point


def test_exact_norm_jacobian_is_refused_for_normalizing_module_output_dictionaries(world):
    model, tokens, mask, *_ = world
    import qlens_jax
    from qlens_jax.dictionaries import Dictionary
    from qlens_jax.lens.validation import LensRequestError

    d = model.config.d_model
    sae = Dictionary(
        W_enc=jnp.ones((d, 2)),
        b_enc=jnp.zeros(2),
        W_dec=jnp.ones((2, d)),
        b_dec=jnp.zeros(d),
        layer=0,
        site_in="attn_out",
        site_out="attn_out",
        kind="sae",
        name="attn-out-2",
        activation="relu",
        input_norm="layer_norm",
    )
    with pytest.raises(
        LensRequestError, match="exact_norm_jacobian is not available .*attn-out-2.*layer_norm.*attn_out\\[0\\]"
    ):
        qlens_jax.plan_request(model, [sae], tokens, mask, options=qlens_jax.LensOptions(exact_norm_jacobian=True))
    assert qlens_jax.plan_request(model, [sae], tokens, mask).sites == (Point("attn_out", 0),)
