"""gpt-oss: attention sinks, the biased top-k-softmax router, the clamped SwiGLU experts and
their linearization as transformers computes them; the tiny model's routing far from ties and
its clamp biting; the rope parameters of official configs; MXFP4 checkpoints refused.

Whole-model logits parity (padded batches) is in test_hf_parity.py, which runs every
`tests/tiny_models.py` entry ("gptoss-every-key", "gptoss-defaults").
"""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import converters
from benchmarks import reference_torch as ref
from converters import UnsupportedOptionError
from converters.checkpoint_files import StateDictSource
from converters.hf_config import model_config_from_hf
from converters.hf_weights import fill_model
from qlens_jax.models.mlp import autodiff_jacobian
from tiny_models import build_hf_model, hf_forward, padded_batch, save_hf_model

ARCH = "gptoss-every-key"
TOL = 1e-4


@pytest.fixture(scope="module")
def converted():
    hf = build_hf_model(ARCH)
    model = converters.load_model(hf)
    tokens, mask = padded_batch(hf.config.vocab_size, seq=12)
    _, res = model.run_with_residuals(jnp.asarray(tokens), jnp.asarray(mask))
    return hf, model, tokens, mask, res


def _layer(tree, layer):
    return jax.tree.map(lambda w: w[layer], tree)


def test_routing_is_far_from_ties_and_the_clamp_bites(converted):
    """At the clean MLP inputs the k-th and next router logits are well apart (a wrong top-k
    shows in the logits, rounding does not decide it), the choices differ between positions, and
    the chosen experts' gate and up projections pass the SwiGLU limit at some positions, so the
    parity tests exercise the clamp."""
    _, model, _, mask, res = converted
    mlp, k, limit = model.blocks.mlp, model.config.experts_per_token, model.config.swiglu_limit
    x = res.mlp_in[:, mask]  # [layers, positions, d]
    logits = jnp.einsum("lpd,lde->lpe", x, mlp.router) + mlp.router_bias[:, None]
    ordered = np.sort(np.asarray(logits), axis=-1)[..., ::-1]
    assert (ordered[..., k - 1] - ordered[..., k]).min() > 1e-3
    chosen = np.argsort(-np.asarray(logits), axis=-1)[..., :k]
    assert len({tuple(sorted(c)) for c in chosen.reshape(-1, k)}) > 3
    gate = jnp.einsum("lpd,ledf->lpef", x, mlp.gate_proj) + mlp.gate_bias[:, None]
    up = jnp.einsum("lpd,ledf->lpef", x, mlp.up_proj) + mlp.up_bias[:, None]
    assert 0.01 < float((gate > limit).mean()) < 0.5 and 0.01 < float((jnp.abs(up) > limit).mean()) < 0.5


def test_parity_would_catch_missing_sinks_or_clamp(converted):
    """Without the sink logits, or with transformers' default clamp instead of the config's, the
    converted model is far from transformers': the logits parity tests check both."""
    hf, model, tokens, mask, _ = converted
    want, _ = hf_forward(hf, tokens, mask)
    no_sinks = eqx.tree_at(lambda m: m.blocks.attn.sinks, model, replace=None, is_leaf=lambda x: x is None)
    wide_clamp = fill_model(dataclasses.replace(model.config, swiglu_limit=7.0), StateDictSource(hf.state_dict()))
    for wrong in (no_sinks, wide_clamp):
        got = np.asarray(wrong(jnp.asarray(tokens), jnp.asarray(mask)))
        assert np.abs(got[mask] - want[mask]).max() > 100 * TOL


def test_linearization_matches_torch_func_through_the_transformers_block(converted):
    """JVP and VJP of the MoE MLP at the clean MLP inputs equal `torch.func.jvp` / `vjp` through
    transformers' `GptOssMLP` (experts fixed at the clean choice, router weights differentiated,
    the clamp's zero slopes included), and the MLP's explicit Jacobian (`RoutedMLP.jacobian`,
    the block-major sweeps') equals autodiff's."""
    hf, model, _, mask, res = converted
    layer = 1
    x = np.array(res.mlp_in[layer])
    rng = np.random.default_rng(0)
    tangent, cotangent = rng.normal(size=x.shape).astype(np.float32), rng.normal(size=x.shape).astype(np.float32)
    block = ref.prepare_model(hf).model.layers[layer].mlp
    torch_block = lambda h: block(h)[0]  # (routed sum, router scores)
    torch_out, torch_jvp = torch.func.jvp(torch_block, (torch.as_tensor(x),), (torch.as_tensor(tangent),))
    _, pull = torch.func.vjp(torch_block, torch.as_tensor(x))
    mlp = _layer(model.blocks.mlp, layer)
    out, jvp = eqx.filter_jit(lambda m, h, t: jax.jvp(m, (h,), (t,)))(mlp, jnp.asarray(x), jnp.asarray(tangent))
    jax_vjp = eqx.filter_jit(lambda m, h, c: jax.vjp(m, h)[1](c)[0])(mlp, jnp.asarray(x), jnp.asarray(cotangent))
    for got, want in ((out, torch_out), (jvp, torch_jvp), (jax_vjp, pull(torch.as_tensor(cotangent))[0])):
        want = want.detach().numpy()
        assert np.abs(want).max() > 0.1
        np.testing.assert_allclose(np.asarray(got), want, atol=TOL * np.abs(want).max(), rtol=0)
    points = jnp.asarray(x[mask][:4])
    explicit = eqx.filter_jit(lambda m, p: jax.vmap(m.jacobian)(p))(mlp, points)
    autodiff = eqx.filter_jit(lambda m, p: jax.vmap(lambda q: autodiff_jacobian(m, q))(p))(mlp, points)
    np.testing.assert_allclose(np.asarray(explicit[0]), np.asarray(autodiff[0]), atol=1e-6, rtol=0)
    want = np.asarray(autodiff[1])
    np.testing.assert_allclose(np.asarray(explicit[1]), want, atol=1e-5 * np.abs(want).max(), rtol=0)


def _raw():
    return build_hf_model(ARCH).config.to_dict()


def test_official_rope_keys_convert_as_transformers_reads_them():
    """Official configs carry the legacy `rope_scaling` beside `rope_theta`; configs with neither
    get transformers' YaRN (factor 32, untruncated) on a base of 150,000."""
    import transformers

    raw = _raw()
    params = dict(raw.pop("rope_parameters"))
    legacy = {**raw, "rope_theta": params.pop("rope_theta"), "rope_scaling": params}
    assert model_config_from_hf(legacy) == model_config_from_hf(_raw())
    bare = dict(raw)
    hf = transformers.GptOssForCausalLM(transformers.GptOssConfig.from_dict(bare))
    config = model_config_from_hf(bare)
    np.testing.assert_allclose(config.rope_inv_freq[0], hf.model.rotary_emb.inv_freq.numpy(), rtol=1e-6)
    assert config.rope_scales[0] == pytest.approx(hf.model.rotary_emb.attention_scaling)
    assert config.rope_scales[0] != 1.0


def test_num_experts_is_an_alias_of_num_local_experts():
    raw = _raw()
    raw["num_experts"] = raw.pop("num_local_experts")
    assert model_config_from_hf(raw) == model_config_from_hf(_raw())
    with pytest.raises(converters.ConversionError, match="num_experts=5 and num_local_experts=4"):
        model_config_from_hf({**_raw(), "num_experts": 5})


def test_an_mxfp4_checkpoint_is_refused_by_its_quantization_config(tmp_path):
    """The published gpt-oss files keep their experts in MXFP4 (`quantization_config`): refused in
    one line naming the quantization and how to dequantize, before any weight is read."""
    directory = save_hf_model(build_hf_model(ARCH), tmp_path / "model")
    config = json.loads((directory / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedOptionError, match=r"quant_method='mxfp4'.*dequantize") as err:
        converters.load_model(directory)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "hook, site",
    [
        ("model.layers.5", "resid_post"),
        ("blocks.5.hook_resid_post", "resid_post"),
        ("model.layers.5.mlp.output", "mlp_out"),
        ("model.layers.5.self_attn.o_proj.input", "z"),
        ("model.layers.5.post_attention_layernorm.output", "mlp_in"),
    ],
)
def test_hook_names_of_gpt_oss_dictionaries(hook, site):
    """The SAEs of gpt-oss-20b in sae_lens's registry (`resid_post` of a layer) and the MoE
    block's output, the routed sum, resolve to their sites; gpt-oss has no post-norms."""
    from converters.families import family
    from qlens_jax.dictionaries.sites import HookSite, has_post_norms, parse_hook_name

    assert parse_hook_name(hook, "gpt_oss") == HookSite(5, site)
    assert has_post_norms("gpt_oss") is family("gpt_oss").post_norms is False


def test_swiglu_options_are_checked():
    config = model_config_from_hf(_raw())
    with pytest.raises(Exception, match="swiglu_alpha and swiglu_limit are set together"):
        dataclasses.replace(config, swiglu_alpha=None)
