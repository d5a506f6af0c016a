"""Dictionaries on module outputs (`attn_out`, `z`, `mlp_out`): sae_lens folders written by
sae_lens itself, and the published Gemma Scope (`att`, `mlp`), Gemma Scope 2 (`attn_out`,
`mlp_out`) and Llama Scope (`LXA`, `LXM`) layouts, each compared with sae_lens's own loader
and forward pass and with the owner's formula written out in numpy."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from converters import load_dictionary
from dictionary_helpers import (
    D_HEAD,
    D_IN,
    D_SAE,
    D_Z,
    N_HEADS,
    TinyModelConfig,
    assert_close,
    assert_sparse_but_active,
    inputs,
)
from qlens_jax.dictionaries import MODULE_OUTPUT_SITES, SAE_SITES, default_name
from saelens_loaders import sae_lens_from_repo
from test_format_parity import (
    gemma_scope_params,
    normal,
    relu,
    rng,
    sparsify_forward,
    write_gemma_scope_2,
    write_openai,
    write_sparsify,
)
from test_saelens_parity import INFERENCE_CLASSES, randomize

GEMMA = TinyModelConfig(model_type="gemma3_text")


def head_inputs(seed: int) -> np.ndarray:
    """z activations as TransformerLens `hook_z` has them: `[batch, seq, n_heads, d_head]`."""
    return inputs((2, 5, N_HEADS, D_HEAD), seed=seed)


def compare(ours, theirs, x: np.ndarray) -> None:
    """encode, decode (of sae_lens's activations) and forward, to 1e-5. `x` is what sae_lens
    takes (`[..., n_heads, d_head]` for its `hook_z` reshaping); ours reads it flattened."""
    flat = x.reshape(*x.shape[:2], -1)
    with torch.no_grad():
        their_acts = theirs.encode(torch.from_numpy(x))
        their_decoded = theirs.decode(their_acts)
        their_forward = theirs(torch.from_numpy(x))
    assert_sparse_but_active(their_acts.numpy())
    assert_close(ours.encode(flat), their_acts.numpy())
    assert_close(ours.decode(their_acts.numpy(), flat), their_decoded.numpy().reshape(flat.shape))
    assert_close(ours.reconstruct(flat), their_forward.numpy().reshape(flat.shape))


def jumprelu_np(x, p):
    """Gemma Scope's published JumpReLU SAE: no b_dec subtraction, no normalization."""
    pre = x @ p["W_enc"] + p["b_enc"]
    acts = (pre > p["threshold"]) * relu(pre)
    return acts, acts @ p["W_dec"] + p["b_dec"]


def test_sites_are_the_lens_sites():
    from qlens_jax.lens.points import MODULE_OUTPUT_SITES as LENS_MODULE_OUTPUT_SITES

    assert MODULE_OUTPUT_SITES == LENS_MODULE_OUTPUT_SITES
    assert set(MODULE_OUTPUT_SITES) <= set(SAE_SITES)


def test_default_names():
    assert default_name("sae", "attn_out", 16384) == "attn-out-16k"
    assert default_name("sae", "z", 24576) == "z-24k"
    assert default_name("sae", "mlp_out", 16384) == "mlp-out-16k"
    assert default_name("transcoder", "mlp_in", 16384) == "transcoder-16k"


# ---- sae_lens folders ------------------------------------------------------------------------
# name -> (architecture, config, d_in, hook_name, hf_hook_name, placement)
SAELENS_CASES = {
    "attn_out": ("standard", {}, D_IN, "blocks.2.hook_attn_out", "transformer.h.2.attn.c_proj.output", (2, "attn_out")),
    "mlp_out": ("jumprelu", {}, D_IN, "blocks.1.hook_mlp_out", "transformer.h.1.mlp.output", (1, "mlp_out")),
    "z-hook_z-reshape": (
        "topk",
        {"k": 5, "reshape_activations": "hook_z"},
        D_Z,
        "blocks.3.attn.hook_z",
        "transformer.h.3.attn.c_proj.input",
        (3, "z"),
    ),
    "z-flat": ("jumprelu", {"apply_b_dec_to_input": False}, D_Z, "blocks.0.attn.hook_z", None, (0, "z")),
}


@pytest.mark.parametrize("case", sorted(SAELENS_CASES))
def test_saelens_module_output_saes_match_sae_lens(sae_lens, case, tmp_path, model):
    from sae_lens.saes.sae import SAEMetadata

    arch, cfg, d_in, hook, hf_hook, (layer, site) = SAELENS_CASES[case]
    name = INFERENCE_CLASSES[arch]
    config = getattr(sae_lens, name + "Config")(
        d_in=d_in, d_sae=D_SAE, **cfg, metadata=SAEMetadata(model_name="tiny", hook_name=hook, hf_hook_name=hf_hook)
    )
    sae = getattr(sae_lens, name)(config)
    sae.eval()
    randomize(sae, seed=len(case))
    sae.save_model(tmp_path)
    x = head_inputs(seed=3) if cfg.get("reshape_activations") == "hook_z" else inputs((2, 5, d_in), seed=3)
    for source in (tmp_path, sae):
        ours = load_dictionary(source, model)
        assert (ours.kind, ours.layer, ours.site_in, ours.site_out) == ("sae", layer, site, site)
        assert ours.name == f"{site.replace('_', '-')}-48"
        compare(ours, sae, x)
    np.testing.assert_array_equal(ours.key_vectors(), sae.W_enc.detach().numpy().T)
    np.testing.assert_array_equal(ours.value_vectors(), sae.W_dec.detach().numpy())


def test_z_is_flattened_heads_in_transformer_lens_order(sae_lens, tmp_path, model):
    """The z input is `[..., n_heads * d_head]` with head-major order (sae_lens's `... n_heads
    d_head -> ... (n_heads d_head)`): a feature reading only head 1 responds to head 1."""
    from sae_lens.saes.sae import SAEMetadata

    config = sae_lens.StandardSAEConfig(
        d_in=D_Z,
        d_sae=D_SAE,
        reshape_activations="hook_z",
        apply_b_dec_to_input=False,
        metadata=SAEMetadata(hook_name="blocks.1.attn.hook_z"),
    )
    sae = sae_lens.StandardSAE(config)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[D_HEAD * 1 : D_HEAD * 2, 0] = 1.0  # feature 0 sums head 1
        sae.b_enc.zero_()
    sae.save_model(tmp_path)
    ours = load_dictionary(tmp_path, model)
    x = np.zeros((1, N_HEADS, D_HEAD), np.float32)
    x[0, 1] = 0.5
    assert float(ours.encode(x.reshape(1, D_Z))[0, 0]) == pytest.approx(0.5 * D_HEAD)
    with torch.no_grad():
        assert float(sae.encode(torch.from_numpy(x))[0, 0]) == pytest.approx(0.5 * D_HEAD)


# ---- Gemma Scope (Gemma 2) att / mlp ----------------------------------------------------------
@pytest.mark.parametrize("release,site,d_in", [("att", "z", D_Z), ("mlp", "mlp_out", D_IN)])
def test_gemma_scope_att_and_mlp(sae_lens, monkeypatch, tmp_path, model, release, site, d_in):
    root = tmp_path / f"gemma-scope-2b-pt-{release}"
    folder = "layer_2/width_48/average_l0_9"
    (root / folder).mkdir(parents=True)
    p = gemma_scope_params(4, d_in=d_in)
    np.savez(root / folder / "params.npz", **p)
    ours = load_dictionary(root / folder, model)
    assert (ours.kind, ours.layer, ours.site_in, ours.site_out) == ("sae", 2, site, site)
    assert ours.name == f"{site.replace('_', '-')}-48"
    x = inputs((2, 5, d_in), seed=4)
    acts, out = jumprelu_np(x, p)
    assert_sparse_but_active(acts)
    assert_close(ours.encode(x), acts)
    assert_close(ours.reconstruct(x), out)
    theirs = sae_lens_from_repo(
        sae_lens,
        monkeypatch,
        "gemma_2_sae_huggingface_loader",
        root,
        f"google/gemma-scope-2b-pt-{release}",
        folder,
        cfg_overrides={"d_in": d_in, "d_sae": D_SAE},
    )
    assert theirs.cfg.metadata.hook_name == f"blocks.2.{'attn.hook_z' if site == 'z' else 'hook_mlp_out'}"
    compare(ours, theirs, head_inputs(seed=5) if site == "z" else inputs((2, 5, d_in), seed=5))


# ---- Gemma Scope 2 (Gemma 3) attn_out / mlp_out ------------------------------------------------
@pytest.mark.parametrize(
    "kind,hook,site,d_in",
    [
        # the published attn_out SAEs read the o_proj input: z (docs/dictionaries.md, Gemma Scope 2)
        ("attn_out", "model.layers.2.self_attn.o_proj.input", "z", D_Z),
        ("mlp_out", "model.layers.2.post_feedforward_layernorm.output", "mlp_out", D_IN),
    ],
)
def test_gemma_scope_2_attn_out_and_mlp_out(sae_lens, monkeypatch, tmp_path, kind, hook, site, d_in):
    root = tmp_path / "gemma-scope-2-270m-pt"
    folder = f"{kind}/layer_2_width_48_l0_small"
    p = write_gemma_scope_2(root / folder, kind="sae", hook_in=hook, d_in=d_in, seed=6)
    ours = load_dictionary(root / folder, GEMMA)
    assert (ours.kind, ours.layer, ours.site_in, ours.site_out) == ("sae", 2, site, site)
    assert ours.name == f"{site.replace('_', '-')}-48" and ours.info.hf_hook_name == hook
    x = inputs((2, 5, d_in), seed=6)
    acts, out = jumprelu_np(x, {"W_enc": p["w_enc"], "W_dec": p["w_dec"], **p})
    assert_sparse_but_active(acts)
    assert_close(ours.encode(x), acts)
    assert_close(ours.reconstruct(x), out)
    theirs = sae_lens_from_repo(
        sae_lens, monkeypatch, "gemma_3_sae_huggingface_loader", root, "google/gemma-scope-2-270m-pt", folder
    )
    assert theirs.cfg.metadata.hf_hook_name == hook
    compare(ours, theirs, inputs((2, 5, d_in), seed=7))


# ---- Llama Scope LXA / LXM (and LXR) ----------------------------------------------------------
def write_llama_scope(
    folder, *, hook_in, hook_out=None, norm_in=1.7, norm_out=None, theta=0.4, unit_decoder=True, seed=8, **cfg
):
    """A Llama Scope folder as published: lm_saes `hyperparams.json` and torch-Linear weights
    in `checkpoints/final.safetensors`."""
    (folder / "checkpoints").mkdir(parents=True)
    g = rng(seed)
    dec = normal(g, D_IN, D_SAE)
    if unit_decoder:
        dec = (dec / np.linalg.norm(dec.astype(np.float64), axis=0)).astype(np.float32)
    p = {
        "encoder.weight": normal(g, D_SAE, D_IN),
        "encoder.bias": normal(g, D_SAE, scale=0.5),
        "decoder.weight": dec,
        "decoder.bias": normal(g, D_IN, scale=0.5),
    }
    save_file(p, folder / "checkpoints" / "final.safetensors")
    hyper = {
        "device": "cuda:0",
        "seed": 42,
        "dtype": "torch.bfloat16",
        "hook_point_in": hook_in,
        "hook_point_out": hook_out or hook_in,
        "use_decoder_bias": True,
        "apply_decoder_bias_to_pre_encoder": False,
        "expansion_factor": D_SAE // D_IN,
        "d_model": D_IN,
        "d_sae": D_SAE,
        "bias_init_method": "all_zero",
        "act_fn": "jumprelu",
        "jump_relu_threshold": theta,
        "norm_activation": "dataset-wise",
        "dataset_average_activation_norm": {"in": norm_in, "out": norm_out or norm_in},
        "decoder_exactly_fixed_norm": False,
        "sparsity_include_decoder_norm": True,
        "use_glu_encoder": False,
        "init_decoder_norm": 0.5,
        "init_encoder_norm": None,
        "init_encoder_with_decoder_transpose": True,
        "lp": 1,
        "l1_coefficient": 8e-05,
        "top_k": 50,
        "use_batch_norm_mse": True,
        "use_ghost_grads": False,
        "tp_size": 1,
        "ddp_size": 1,
        **cfg,
    }
    (folder / "hyperparams.json").write_text(json.dumps(hyper))
    return p, hyper


def lm_saes_forward(p, hyper, x):
    """lm_saes's inference, written out: `from_config` standardizes the parameters for the
    dataset-wise norms, then (with sparsity_include_decoder_norm) moves decoder norms into the
    encoder; `encode` keeps pre-activations above the threshold; `decode` is linear."""
    d = hyper["d_model"]
    s_in = math.sqrt(d) / hyper["dataset_average_activation_norm"]["in"]
    s_out = math.sqrt(d) / hyper["dataset_average_activation_norm"]["out"]
    enc, b_enc = p["encoder.weight"].astype(np.float64), p["encoder.bias"] / s_in
    dec, b_dec = p["decoder.weight"] * s_in / s_out, p["decoder.bias"] / s_out
    if hyper["sparsity_include_decoder_norm"]:
        n = np.linalg.norm(dec, axis=0)
        dec, enc, b_enc = dec / n, enc * n[:, None], b_enc * n
    pre = x @ enc.T + b_enc
    acts = np.where(pre > hyper["jump_relu_threshold"], pre, 0.0)
    return acts, acts @ dec.T + b_dec


@pytest.mark.parametrize(
    "letter,hook,site",
    [
        ("A", "blocks.2.hook_attn_out", "attn_out"),
        ("M", "blocks.2.hook_mlp_out", "mlp_out"),
        ("R", "blocks.2.hook_resid_post", "resid_post"),
    ],
)
def test_llama_scope(sae_lens, monkeypatch, tmp_path, model, letter, hook, site):
    root = tmp_path / f"Llama3_1-8B-Base-LX{letter}-8x"
    folder = f"Llama3_1-8B-Base-L2{letter}-8x"
    p, hyper = write_llama_scope(root / folder, hook_in=hook)
    s = math.sqrt(D_IN) / hyper["dataset_average_activation_norm"]["in"]
    folded = load_dictionary(root / folder, model)
    explicit = load_dictionary(
        root / folder / "checkpoints" / "final.safetensors", model, fold_norm_scaling_factor=False
    )
    assert (folded.kind, folded.layer, folded.site_in, folded.site_out) == ("sae", 2, site, site)
    assert folded.name == f"{site.replace('_', '-')}-48"
    assert (folded.input_norm, explicit.input_norm) == ("none", "scale")
    x = inputs(seed=8)
    owner_acts, owner_out = lm_saes_forward(p, hyper, x)
    assert_sparse_but_active(owner_acts)
    for ours in (folded, explicit):
        # our activations are in the units of the training inputs (sae_lens's): s times the owner's
        assert_close(ours.encode(x), s * owner_acts)
        assert_close(ours.reconstruct(x), owner_out)
    theirs = sae_lens_from_repo(
        sae_lens,
        monkeypatch,
        "llama_scope_sae_huggingface_loader",
        root,
        f"fnlp/Llama3_1-8B-Base-LX{letter}-8x",
        folder,
        norm_scaling_factor=s,
    )
    assert theirs.cfg.metadata.hook_name == hook
    for ours in (folded, explicit):
        compare(ours, theirs, inputs(seed=9))


def test_llama_scope_decoder_norms_gate_as_lm_saes_does(tmp_path, model):
    """With decoder columns not of unit norm, `sparsity_include_decoder_norm` changes which
    features fire (sae_lens's loader ignores it); the owner's forward pass is reproduced."""
    folder = tmp_path / "Llama3_1-8B-Base-L1M-8x"
    p, hyper = write_llama_scope(folder, hook_in="blocks.1.hook_mlp_out", unit_decoder=False, seed=10)
    ours = load_dictionary(folder, model)
    x = inputs(seed=10)
    owner_acts, owner_out = lm_saes_forward(p, hyper, x)
    plain_acts, _ = lm_saes_forward(p, {**hyper, "sparsity_include_decoder_norm": False}, x)
    assert ((owner_acts != 0) != (plain_acts != 0)).any(), "degenerate test: the norms change no gate"
    assert_close(ours.reconstruct(x), owner_out)
    np.testing.assert_array_equal(np.asarray(ours.encode(x)) != 0, owner_acts != 0)


# ---- OpenAI resid_delta_* and sparsify module hookpoints ---------------------------------------
@pytest.mark.parametrize("location,site", [("resid_delta_attn", "attn_out"), ("resid_delta_mlp", "mlp_out")])
def test_openai_resid_delta_saes(tmp_path, model, location, site):
    path = tmp_path / f"{location}_v5_48" / "autoencoders" / "1.pt"
    write_openai(path)
    d = load_dictionary(path, model)
    assert (d.layer, d.site_in, d.site_out, d.name) == (1, site, site, f"{site.replace('_', '-')}-48")


@pytest.mark.parametrize(
    "hookpoint,site", [("layers.2.self_attn", "attn_out"), ("h.1.attn", "attn_out"), ("layers.3.mlp", "mlp_out")]
)
def test_sparsify_module_outputs(tmp_path, model, hookpoint, site):
    p = write_sparsify(tmp_path / hookpoint, seed=11)
    d = load_dictionary(tmp_path / hookpoint, model)
    assert (d.kind, d.site_in, d.site_out, d.info.hf_hook_name) == ("sae", site, site, f"{hookpoint}.output")
    x = inputs(seed=11)
    assert_close(d.reconstruct(x), sparsify_forward(p, x, transcode=False, activation="topk", k=5)[1])
