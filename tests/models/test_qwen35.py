"""Qwen3.5 specifics beyond the parametrized parity tests: Gated DeltaNet's chunked recurrence
across chunk boundaries, left and middle padding as transformers masks them, transformers'
default layer pattern, the multimodal wrapper's language model, and refused options."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import transformers

import converters
from converters.errors import UnsupportedOptionError
from qlens_jax.models import linear_attention
from tiny_models import ARCHITECTURES, VOCAB, build_hf_model, hf_forward, padded_batch, perturbed, save_hf_model

TOL = 1e-4


@pytest.fixture(scope="module")
def hybrid():
    hf = build_hf_model("qwen35-hybrid", seed=3)
    return hf, converters.load_model(hf)


def test_recurrence_chunks_carry_the_state(hybrid, monkeypatch):
    """Chunks of 5 positions over a 23-position sequence (the last chunk padded) give
    transformers' logits: the state crosses chunk boundaries and padding steps leave it alone."""
    hf, model = hybrid
    monkeypatch.setattr(linear_attention, "CHUNK", 5)
    tokens, mask = padded_batch(VOCAB, batch=2, seq=23, seed=4)
    want, _ = hf_forward(hf, tokens, mask)
    got = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    np.testing.assert_allclose(got[mask], want[mask], atol=TOL, rtol=0)


@pytest.mark.parametrize("layout", ["left", "middle"])
def test_padding_as_transformers_masks_it(hybrid, layout):
    """transformers zeroes pad positions' inputs to the linear-attention layers; a pad in the
    middle of a row still decays the state, and the conversion does the same."""
    hf, model = hybrid
    tokens, mask = padded_batch(VOCAB, seq=12, seed=5)
    if layout == "left":
        mask = mask[:, ::-1].copy()
    else:
        mask = np.ones_like(mask)
        mask[:, 4:6] = False
    tokens = np.where(mask, tokens, 0).astype(np.int32)
    want, _ = hf_forward(hf, tokens, mask)
    got = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    np.testing.assert_allclose(got[mask], want[mask], atol=TOL, rtol=0)


def test_layers_without_layer_types_follow_full_attention_interval():
    raw = {k: v for k, v in build_hf_model("qwen35-hybrid").config.to_dict().items() if k != "layer_types"}
    raw.update(num_hidden_layers=7, full_attention_interval=3)
    want = transformers.Qwen3_5TextConfig(num_hidden_layers=7, full_attention_interval=3).layer_types
    assert want.count("full_attention") == 2
    linear = converters.model_config_from_hf(raw).linear_layers
    assert list(linear) == [t == "linear_attention" for t in want]


def _raw(**changes):
    return {**build_hf_model("qwen35-hybrid").config.to_dict(), **changes}


@pytest.mark.parametrize(
    "changes, named",
    [
        (dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0}), "rope_type='linear'"),
        (dict(rope_parameters={"rope_theta": 500.0, "partial_rotary_factor": 0.5, "beta": 1}), "beta"),
        (dict(rope_parameters={"rope_theta": 500.0, "partial_rotary_factor": 0.1}), "partial_rotary_factor=0.1"),
        (dict(layer_types=["linear_attention", "sliding_attention", "full_attention"]), "sliding_attention"),
        (dict(attn_output_gate=False), "attn_output_gate=False"),
        (dict(linear_kernel_backend="fla"), "linear_kernel_backend"),
    ],
)
def test_unsupported_options_are_refused_by_name(changes, named):
    with pytest.raises(UnsupportedOptionError, match=named.replace("(", r"\(").replace("[", r"\[")):
        converters.model_config_from_hf(_raw(**changes))


def test_moe_shared_expert_width_zero_is_refused():
    raw = {**build_hf_model("qwen35moe-hybrid").config.to_dict(), "shared_expert_intermediate_size": 0}
    with pytest.raises(UnsupportedOptionError, match="shared_expert_intermediate_size=0"):
        converters.model_config_from_hf(raw)


@pytest.fixture(scope="module")
def multimodal(tmp_path_factory):
    """A tiny `Qwen3_5ForConditionalGeneration` whose language model is "qwen35-hybrid"'s."""
    import torch

    text = dict(ARCHITECTURES["qwen35-hybrid"][2], vocab_size=VOCAB, pad_token_id=0, initializer_range=0.15)
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=48, patch_size=14)
    config = transformers.Qwen3_5Config(text_config=text, vision_config=vision, tie_word_embeddings=False)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    hf = perturbed(transformers.Qwen3_5ForConditionalGeneration(config).eval(), 0)
    return hf, save_hf_model(hf, tmp_path_factory.mktemp("qwen35-mm"))


def test_multimodal_wrapper_converts_its_language_model(multimodal):
    hf, directory = multimodal
    model = converters.load_model(directory)
    assert model.config.model_type == "qwen3_5_text" and not model.config.tie_word_embeddings
    tokens, mask = padded_batch(VOCAB, seq=10, seed=6)
    want, _ = hf_forward(hf, tokens, mask)
    got = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    np.testing.assert_allclose(got[mask], want[mask], atol=TOL, rtol=0)


def test_config_with_unequal_mixer_widths_is_refused():
    config = converters.model_config_from_hf(_raw())
    with pytest.raises(ValueError, match="value width"):
        dataclasses.replace(config, linear_value_dim=8)


def test_routed_jacobian_with_shared_expert_equals_autodiff():
    """The explicit Jacobian the block-major sweeps form (chosen experts, router weights and
    the gated shared expert) equals forward-mode autodiff of the module at several positions."""
    import jax

    from qlens_jax.models import init_transformer
    from qlens_jax.models.mlp import autodiff_jacobian

    config = converters.model_config_from_hf(build_hf_model("qwen35moe-hybrid").config.to_dict())
    model = init_transformer(config, jax.random.key(0))
    mlp = jax.tree.map(lambda x: x[0], model.blocks.mlp)
    for x in jax.random.normal(jax.random.key(1), (4, config.d_model)):
        out, jac = mlp.jacobian(x)
        want_out, want_jac = autodiff_jacobian(mlp, x)
        np.testing.assert_allclose(out, want_out, atol=1e-6, rtol=0)
        np.testing.assert_allclose(jac, want_jac, atol=1e-5, rtol=0)
        assert np.abs(np.asarray(jac)).max() > 1e-4
