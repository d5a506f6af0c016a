"""Gemma-3 multimodal checkpoints (`Gemma3ForConditionalGeneration`, every Gemma-3 above 1B):
the language model converts and reproduces transformers on text input; the vision tower and
the projector are ignored by name, and any other unexpected tensor is still refused."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

import converters
from converters import ConversionError
from qlens_jax.models import init_transformer
from tiny_models import build_hf_gemma3_multimodal, hf_forward, padded_batch, save_hf_model

TOL = 1e-4


@pytest.fixture(scope="module", params=["tied", "untied"])
def converted(request, tmp_path_factory):
    hf = build_hf_gemma3_multimodal(seed=7, tie_word_embeddings=request.param == "tied")
    directory = save_hf_model(hf, tmp_path_factory.mktemp(f"gemma3-mm-{request.param}"))
    return hf, directory, converters.load_model(directory)


def test_checkpoint_holds_vision_tower_and_language_model(converted):
    hf, directory, model = converted
    keys = set(load_file(directory / "model.safetensors"))
    assert any(k.startswith("vision_tower.") for k in keys)
    assert any(k.startswith("multi_modal_projector.") for k in keys)
    assert ("language_model.lm_head.weight" in keys) == (not hf.config.tie_word_embeddings)
    assert model.config.model_type == "gemma3_text"
    assert model.config.tie_word_embeddings == hf.config.tie_word_embeddings
    assert set(model.config.sliding_windows) == {0, hf.config.text_config.sliding_window}


def test_logits_match_transformers(converted):
    hf, _, model = converted
    tokens, mask = padded_batch(hf.config.text_config.vocab_size, seq=12)
    want, _ = hf_forward(hf, tokens, mask)
    got = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    assert np.abs(want[mask]).max() > 0.5, "logits too small for a meaningful comparison"
    np.testing.assert_allclose(got[mask], want[mask], atol=TOL, rtol=0)


def test_residual_stream_matches_hidden_states(converted):
    hf, _, model = converted
    tokens, mask = padded_batch(hf.config.text_config.vocab_size, seq=10, seed=1)
    _, hidden = hf_forward(hf, tokens, mask)
    _, res = model.run_with_residuals(jnp.asarray(tokens), jnp.asarray(mask))
    n_layers = model.config.n_layers
    assert len(hidden) == n_layers + 1
    for b in range(n_layers):
        np.testing.assert_allclose(np.asarray(res.resid_pre[b])[mask], hidden[b][mask], atol=TOL, rtol=0)
    final = np.asarray(model.final_norm_fn(res.resid_post[-1]))
    np.testing.assert_allclose(final[mask], hidden[n_layers][mask], atol=TOL, rtol=0)


def test_in_memory_model_equals_saved_checkpoint(converted):
    hf, _, model = converted
    assert any(k.startswith("model.vision_tower.") for k in hf.state_dict())
    tokens, mask = padded_batch(hf.config.text_config.vocab_size, seq=8, seed=2)
    from_memory = converters.load_model(hf)
    assert from_memory.config == model.config
    want = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    np.testing.assert_array_equal(np.asarray(from_memory(jnp.asarray(tokens), jnp.asarray(mask))), want)


@pytest.fixture(scope="module")
def saved_weights(tmp_path_factory):
    hf = build_hf_gemma3_multimodal(seed=8, tie_word_embeddings=False)
    directory = save_hf_model(hf, tmp_path_factory.mktemp("gemma3-mm-errors"))
    return directory, load_file(directory / "model.safetensors")


def _with_weights(saved_weights, tmp_path, edit):
    directory, weights = saved_weights
    target = tmp_path / "model"
    target.mkdir()
    (target / "config.json").write_text((directory / "config.json").read_text())
    weights = dict(weights)
    edit(weights)
    save_file(weights, target / "model.safetensors")
    return target


@pytest.mark.parametrize(
    "extra", ["audio_tower.encoder.weight", "language_model.model.layers.9.mlp.up_proj.weight", "lm_head.weight"]
)
def test_unexpected_tensor_besides_the_vision_tower_is_named(saved_weights, tmp_path, extra):
    target = _with_weights(saved_weights, tmp_path, lambda w: w.update({extra: np.ones(4, np.float32)}))
    with pytest.raises(ConversionError, match="does not account for") as err:
        converters.load_model(target)
    assert repr(extra) in str(err.value)
    assert "vision_tower" not in str(err.value) and "multi_modal_projector" not in str(err.value)


def test_missing_language_model_tensor_is_named(saved_weights, tmp_path):
    key = "language_model.model.layers.1.mlp.up_proj.weight"
    target = _with_weights(saved_weights, tmp_path, lambda w: w.pop(key))
    with pytest.raises(ConversionError, match=rf"missing weight '{key}'"):
        converters.load_model(target)


def test_missing_untied_lm_head_is_named(saved_weights, tmp_path):
    target = _with_weights(saved_weights, tmp_path, lambda w: w.pop("language_model.lm_head.weight"))
    with pytest.raises(ConversionError, match=r"missing weight 'language_model\.lm_head\.weight'"):
        converters.load_model(target)


def test_checkpoint_without_language_model(saved_weights, tmp_path):
    def strip(w):
        for key in [k for k in w if k.startswith("language_model.")]:
            w[key.replace("language_model.model.", "text.")] = w.pop(key)

    target = _with_weights(saved_weights, tmp_path, strip)
    with pytest.raises(ConversionError, match=r"'language_model\.model\.embed_tokens\.weight'") as err:
        converters.load_model(target)
    assert str(target) in str(err.value)


# Shaped like the config.json of google/gemma-3-4b-it: its text_config lists only what differs
# from transformers' Gemma3TextConfig defaults.
SPARSE_4B = {
    "architectures": ["Gemma3ForConditionalGeneration"],
    "boi_token_index": 255999,
    "eoi_token_index": 256000,
    "eos_token_id": [1, 106],
    "image_token_index": 262144,
    "initializer_range": 0.02,
    "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {
        "hidden_size": 2560,
        "intermediate_size": 10240,
        "model_type": "gemma3_text",
        "num_hidden_layers": 34,
        "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
        "sliding_window": 1024,
    },
    "torch_dtype": "bfloat16",
    "transformers_version": "4.50.0.dev0",
    "vision_config": {
        "hidden_size": 1152,
        "image_size": 896,
        "intermediate_size": 4304,
        "model_type": "siglip_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 27,
        "patch_size": 14,
        "vision_use_head": False,
    },
}


def test_sparse_text_config_takes_transformers_defaults():
    kwargs = {k: v for k, v in SPARSE_4B.items() if k != "model_type"}
    hf_config = transformers.Gemma3Config(**kwargs)
    config = converters.model_config_from_hf(SPARSE_4B)
    assert config == converters.model_config_from_hf(hf_config.to_dict())
    assert (config.vocab_size, config.head_dim, config.n_heads, config.n_kv_heads) == (262208, 256, 8, 4)
    assert config.sliding_windows.count(0) == 34 // 6
    with torch.device("meta"):
        hf_model = transformers.Gemma3ForConditionalGeneration(hf_config)
    hf_count = sum(p.numel() for p in hf_model.model.language_model.parameters())
    shapes = eqx.filter_eval_shape(init_transformer, config, jax.random.key(0))
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(eqx.tree_at(lambda m: m.meta, shapes, None)))
    assert config.tie_word_embeddings and count == hf_count
