"""Converted models reproduce Hugging Face transformers: logits and residual stream."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import converters
from tiny_models import ARCHITECTURES, build_hf_model, hf_forward, padded_batch, save_hf_model

TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(ARCHITECTURES))
def converted(request, tmp_path_factory):
    name = request.param
    hf = build_hf_model(name)
    directory = save_hf_model(hf, tmp_path_factory.mktemp(name))
    return name, hf, directory, converters.load_model(directory)


def test_logits_match_transformers(converted):
    name, hf, _, model = converted
    tokens, mask = padded_batch(hf.config.vocab_size, seq=12)
    want, _ = hf_forward(hf, tokens, mask)
    got = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    assert np.abs(want[mask]).max() > 0.5, "logits too small for a meaningful comparison"
    np.testing.assert_allclose(got[mask], want[mask], atol=TOL, rtol=0)


def test_residual_stream_matches_hidden_states(converted):
    name, hf, _, model = converted
    tokens, mask = padded_batch(hf.config.vocab_size, seq=10, seed=1)
    _, hidden = hf_forward(hf, tokens, mask)
    _, res = model.run_with_residuals(jnp.asarray(tokens), jnp.asarray(mask))
    n_layers = model.config.n_layers
    chex.assert_shape(res.resid_pre, (n_layers, *tokens.shape, model.config.d_model))
    # hidden_states[b] is the input of block b; the last entry is after the final norm.
    for b in range(n_layers):
        np.testing.assert_allclose(np.asarray(res.resid_pre[b])[mask], hidden[b][mask], atol=TOL, rtol=0)
    final = np.asarray(model.final_norm_fn(res.resid_post[-1]))
    np.testing.assert_allclose(final[mask], hidden[n_layers][mask], atol=TOL, rtol=0)
    # The decomposition is consistent: pre + attn = mid, mid + mlp = post = next pre; in a
    # parallel block the MLP reads resid_pre (its resid_mid) and both outputs join at post.
    if model.config.parallel_residual:
        np.testing.assert_array_equal(res.resid_mid, res.resid_pre)
        np.testing.assert_allclose(res.resid_post, res.resid_pre + res.attn_out + res.mlp_out, atol=1e-6)
    else:
        np.testing.assert_allclose(res.resid_mid, res.resid_pre + res.attn_out, atol=1e-6)
        np.testing.assert_allclose(res.resid_post, res.resid_mid + res.mlp_out, atol=1e-6)
    np.testing.assert_allclose(res.resid_post[:-1], res.resid_pre[1:], atol=0)


def test_in_memory_model_and_orbax_round_trip(converted, tmp_path):
    name, hf, _, model = converted
    tokens, mask = padded_batch(hf.config.vocab_size, seq=8, seed=2)
    from_memory = converters.load_model(hf)
    want = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)))
    np.testing.assert_array_equal(np.asarray(from_memory(jnp.asarray(tokens), jnp.asarray(mask))), want)
    converters.save_checkpoint(model, tmp_path / "ckpt")
    restored = converters.load_model(tmp_path / "ckpt")
    assert restored.config == model.config
    np.testing.assert_array_equal(np.asarray(restored(jnp.asarray(tokens), jnp.asarray(mask))), want)


def test_sharded_and_pytorch_bin_checkpoints(tmp_path):
    hf = build_hf_model("qwen3-gqa4-tied", seed=3)
    tokens, mask = padded_batch(hf.config.vocab_size, seq=8)
    want, _ = hf_forward(hf, tokens, mask)
    sharded = save_hf_model(hf, tmp_path / "sharded", max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").exists()
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text(hf.config.to_json_string())
    torch.save(hf.state_dict(), binary / "pytorch_model.bin")
    for directory in (sharded, binary):
        got = np.asarray(converters.load_model(directory)(jnp.asarray(tokens), jnp.asarray(mask)))
        np.testing.assert_allclose(got[mask], want[mask], atol=TOL, rtol=0)


def test_bfloat16_parameters_stay_close():
    hf = build_hf_model("llama-gqa2-llama3rope", seed=4)
    tokens, mask = padded_batch(hf.config.vocab_size, seq=8)
    want, _ = hf_forward(hf, tokens, mask)
    model = converters.load_model(hf, dtype="bfloat16")
    assert model.embed_tokens.dtype == jnp.bfloat16
    got = np.asarray(model(jnp.asarray(tokens), jnp.asarray(mask)), np.float32)
    assert np.abs(got[mask] - want[mask]).max() < 0.1 * np.abs(want[mask]).max()


def test_pythia_checkpoint_layout(tmp_path):
    """A GPT-NeoX checkpoint as EleutherAI's Pythia files have it: the legacy rotary keys
    (`rotary_pct`, `rotary_emb_base`), the unembedding as `embed_out.weight`, and per-layer
    buffers that are not parameters (the causal mask, its fill value, the rotary table)."""
    import json

    from safetensors.numpy import load_file, save_file

    hf = build_hf_model("neox-parallel", seed=6)
    directory = save_hf_model(hf, tmp_path / "pythia")
    weights = load_file(directory / "model.safetensors")
    assert "embed_out.weight" in weights and "lm_head.weight" not in weights
    for i in range(hf.config.num_hidden_layers):
        prefix = f"gpt_neox.layers.{i}.attention."
        weights[prefix + "bias"] = np.tril(np.ones((1, 1, 16, 16), bool))
        weights[prefix + "masked_bias"] = np.array(-1e9, np.float32)
        weights[prefix + "rotary_emb.inv_freq"] = np.ones(3, np.float32)
    save_file(weights, directory / "model.safetensors")
    config = json.loads((directory / "config.json").read_text())
    rope = config.pop("rope_parameters")
    config.update(rotary_pct=rope["partial_rotary_factor"], rotary_emb_base=rope["rope_theta"])
    (directory / "config.json").write_text(json.dumps(config))
    tokens, mask = padded_batch(hf.config.vocab_size, seq=8)
    want, _ = hf_forward(hf, tokens, mask)
    got = np.asarray(converters.load_model(directory)(jnp.asarray(tokens), jnp.asarray(mask)))
    np.testing.assert_allclose(got[mask], want[mask], atol=TOL, rtol=0)
