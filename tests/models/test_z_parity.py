"""`run_with_residuals` exposes the module-output sites as transformers computes them: `z` (every
head's output, the input of the attention's output projection), `attn_out` and `mlp_out` (what
each module adds to the residual, after Gemma-2/3's post-norms), on padded samples."""

import chex
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import converters
from tiny_models import build_hf_model, padded_batch, save_hf_model

TOL = 1e-4
ARCHS = [
    "gpt2",
    "llama-gqa2-llama3rope",
    "qwen3-gqa4-tied",
    "gemma3-sliding",
    "qwen3moe-top3-tied",
    "neox-parallel",
    "gemma2-softcaps",
    "gemma-geglu",
    "mistral-sliding",
    "gptoss-every-key",
    "qwen35moe-hybrid",
]


def hf_layers(hf):
    if hasattr(hf, "gpt_neox"):
        return hf.gpt_neox.layers
    return hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers


def hf_sites(layer):
    """(o_proj, attention-branch output module, MLP-branch output module) of one decoder layer,
    named as transformers does (the branch outputs are what is added to the residual)."""
    if hasattr(layer, "attn"):  # GPT-2
        return layer.attn.c_proj, layer.attn, layer.mlp
    if hasattr(layer, "attention"):  # GPT-NeoX
        return layer.attention.dense, layer.attention, layer.mlp
    if hasattr(layer, "linear_attn"):  # Qwen3.5's Gated DeltaNet layers
        return layer.linear_attn.out_proj, layer.linear_attn, layer.mlp
    if hasattr(layer, "post_feedforward_layernorm"):  # Gemma-2/3: post-norms sit before the add
        return layer.self_attn.o_proj, layer.post_attention_layernorm, layer.post_feedforward_layernorm
    return layer.self_attn.o_proj, layer.self_attn, layer.mlp


def hf_module_outputs(hf, tokens, mask):
    """Per layer: o_proj input, attention-branch output, MLP-branch output, as numpy."""
    got = {}
    handles = []

    def first(x):
        return (x[0] if isinstance(x, tuple) else x).detach().numpy()

    for b, layer in enumerate(hf_layers(hf)):
        o_proj, attn, mlp = hf_sites(layer)
        handles.append(o_proj.register_forward_pre_hook(lambda m, args, b=b: got.__setitem__(("z", b), first(args))))
        handles.append(attn.register_forward_hook(lambda m, a, out, b=b: got.__setitem__(("attn_out", b), first(out))))
        handles.append(mlp.register_forward_hook(lambda m, a, out, b=b: got.__setitem__(("mlp_out", b), first(out))))
    try:
        with torch.no_grad():
            hf(
                input_ids=torch.as_tensor(tokens, dtype=torch.long),
                attention_mask=torch.as_tensor(mask, dtype=torch.long),
            )
    finally:
        for handle in handles:
            handle.remove()
    return got


@pytest.fixture(scope="module", params=ARCHS)
def sites(request, tmp_path_factory):
    hf = build_hf_model(request.param)
    model = converters.load_model(save_hf_model(hf, tmp_path_factory.mktemp(request.param)))
    tokens, mask = padded_batch(hf.config.vocab_size, batch=3, seq=10, seed=3)
    assert not mask.all(), "the sample must contain padding"
    _, res = model.run_with_residuals(jnp.asarray(tokens), jnp.asarray(mask))
    return model, res, hf_module_outputs(hf, tokens, mask), mask


def test_z_is_the_input_of_the_output_projection(sites):
    model, res, want, mask = sites
    cfg = model.config
    chex.assert_shape(res.z, (cfg.n_layers, *mask.shape, cfg.n_heads, cfg.head_dim))
    for b in range(cfg.n_layers):
        hf_z = want[("z", b)]
        assert hf_z.shape == (*mask.shape, cfg.n_heads * cfg.head_dim)
        assert np.abs(hf_z[mask]).max() > 0.1, "z too small for a meaningful comparison"
        # heads concatenated in order, each head_dim wide (TransformerLens hook_z flattened)
        per_head = hf_z.reshape(*mask.shape, cfg.n_heads, cfg.head_dim)
        np.testing.assert_allclose(np.asarray(res.z[b])[mask], per_head[mask], atol=TOL, rtol=0)


@pytest.mark.parametrize("site", ["attn_out", "mlp_out"])
def test_module_outputs_are_what_transformers_adds_to_the_residual(sites, site):
    model, res, want, mask = sites
    for b in range(model.config.n_layers):
        hf_out = want[(site, b)]
        assert np.abs(hf_out[mask]).max() > 0.1, f"{site} too small for a meaningful comparison"
        np.testing.assert_allclose(np.asarray(getattr(res, site)[b])[mask], hf_out[mask], atol=TOL, rtol=0)
