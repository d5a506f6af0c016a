"""Formats sae_lens does not write: files laid out exactly as each owner publishes them
(keys, shapes, orientation), compared with the owner's formula written out in numpy here."""

import json

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import save_file

from converters import load_dictionaries, load_dictionary
from dictionary_helpers import (
    D_IN,
    D_SAE,
    TinyModelConfig,
    assert_close,
    assert_sparse_but_active,
    inputs,
    np_topk,
)


def rng(seed):
    return np.random.default_rng(seed)


def normal(g, *shape, scale=0.3):
    return (g.normal(size=shape) * scale).astype(np.float32)


def relu(a):
    return np.maximum(a, 0)


# ---- Gemma Scope (Gemma 2) params.npz ------------------------------------------------------
def gemma_scope_params(seed, d_sae=D_SAE, d_in=D_IN):
    g = rng(seed)
    return {
        "W_enc": normal(g, d_in, d_sae),
        "W_dec": normal(g, d_sae, d_in),
        "b_enc": normal(g, d_sae, scale=0.5),
        "b_dec": normal(g, d_in, scale=0.5),
        "threshold": (g.uniform(size=d_sae) * 0.8).astype(np.float32),
    }


def test_gemma_scope_res_sae(tmp_path, model):
    # laid out like the Hugging Face cache: the file is a symlink to a content-addressed blob
    repo = tmp_path / "models--google--gemma-scope-2b-pt-res"
    folder = repo / "snapshots/abc/layer_3/width_48/average_l0_12"
    folder.mkdir(parents=True)
    (repo / "blobs").mkdir()
    p = gemma_scope_params(0)
    np.savez(repo / "blobs" / "0f1e2d.npz", **p)
    (folder / "params.npz").symlink_to(repo / "blobs" / "0f1e2d.npz")
    d = load_dictionary(folder, model)
    assert (d.kind, d.layer, d.site_in, d.name) == ("sae", 3, "resid_post", "resid-post-48")
    x = inputs()
    pre = x @ p["W_enc"] + p["b_enc"]  # Gemma Scope: no b_dec subtraction
    acts = (pre > p["threshold"]) * relu(pre)
    assert_sparse_but_active(acts)
    assert_close(d.encode(x), acts)
    assert_close(d.reconstruct(x), acts @ p["W_dec"] + p["b_dec"])
    # the same file, with the placement given by the caller instead of the release name
    bare = tmp_path / "layer_3" / "width_48" / "average_l0_12"
    bare.mkdir(parents=True)
    np.savez(bare / "params.npz", **{("w_enc" if k == "W_enc" else k): v for k, v in p.items()})
    assert_close(load_dictionary(bare / "params.npz", model, site="resid_post").encode(x), acts)


def test_gemma_scope_transcoder(tmp_path, model):
    folder = tmp_path / "gemma-scope-2b-pt-transcoders/layer_1/width_48/average_l0_9"
    folder.mkdir(parents=True)
    p = gemma_scope_params(1)
    np.savez(folder / "params.npz", **p)
    d = load_dictionary(folder, model)
    assert (d.kind, d.layer, d.site_in, d.site_out) == ("transcoder", 1, "mlp_in", "mlp_out")
    x = inputs(seed=1)
    pre = x @ p["W_enc"] + p["b_enc"]
    acts = (pre > p["threshold"]) * relu(pre)
    assert_close(d.reconstruct(x), acts @ p["W_dec"] + p["b_dec"])


# ---- Gemma Scope 2 (Gemma 3) config.json + params.safetensors -----------------------------
def write_gemma_scope_2(folder, *, kind, hook_in, hook_out=None, affine=False, seed=2, d_in=D_IN):
    folder.mkdir(parents=True)
    g = rng(seed)
    p = {
        "w_enc": normal(g, d_in, D_SAE),
        "w_dec": normal(g, D_SAE, d_in),
        "b_enc": normal(g, D_SAE, scale=0.5),
        "b_dec": normal(g, d_in, scale=0.5),
        "threshold": (g.uniform(size=D_SAE) * 0.8).astype(np.float32),
    }
    if affine:
        p["affine_skip_connection"] = normal(g, d_in, d_in, scale=0.2)
    save_file(p, folder / "params.safetensors")
    cfg = {
        "width": "48",
        "model_name": "google/gemma-3-270m-pt",
        "architecture": "jump_relu",
        "l0": "small",
        "affine_connection": affine,
        "type": kind,
        "hf_hook_point_in": hook_in,
    }
    if hook_out:
        cfg["hf_hook_point_out"] = hook_out
    (folder / "config.json").write_text(json.dumps(cfg))
    return p


def test_gemma_scope_2_resid_post_sae(tmp_path):
    model = TinyModelConfig(model_type="gemma3_text")
    folder = tmp_path / "resid_post" / "layer_2_width_48_l0_small"
    p = write_gemma_scope_2(folder, kind="sae", hook_in="model.layers.2.output")
    d = load_dictionary(folder, model)
    assert (d.kind, d.layer, d.site_in, d.name) == ("sae", 2, "resid_post", "resid-post-48")
    x = inputs(seed=2)
    pre = x @ p["w_enc"] + p["b_enc"]
    acts = (pre > p["threshold"]) * relu(pre)
    assert_sparse_but_active(acts)
    assert_close(d.encode(x), acts)
    assert_close(d.reconstruct(x), acts @ p["w_dec"] + p["b_dec"])


def test_gemma_scope_2_affine_transcoder(tmp_path):
    model = TinyModelConfig(model_type="gemma3_text")
    folder = tmp_path / "transcoder" / "layer_1_width_48_l0_big_affine"
    p = write_gemma_scope_2(
        folder,
        kind="transcoder",
        affine=True,
        hook_in="model.layers.1.pre_feedforward_layernorm.output",
        hook_out="model.layers.1.post_feedforward_layernorm.output",
    )
    d = load_dictionary(folder, model)
    assert (d.kind, d.layer, d.site_in, d.site_out) == ("transcoder", 1, "mlp_in", "mlp_out")
    x = inputs(seed=3)
    pre = x @ p["w_enc"] + p["b_enc"]
    acts = (pre > p["threshold"]) * relu(pre)
    assert_close(d.reconstruct(x), acts @ p["w_dec"] + p["b_dec"] + x @ p["affine_skip_connection"])


# ---- OpenAI sparse_autoencoder .pt ---------------------------------------------------------
def write_openai(path, seed=4, k=5, activation="TopK", postact="ReLU"):
    path.parent.mkdir(parents=True, exist_ok=True)
    g = rng(seed)
    p = {
        "pre_bias": normal(g, D_IN, scale=0.5),
        "encoder.weight": normal(g, D_SAE, D_IN),
        "latent_bias": normal(g, D_SAE, scale=0.5),
        "decoder.weight": normal(g, D_IN, D_SAE),
    }
    state = {k_: torch.from_numpy(v) for k_, v in p.items()}
    state.update(
        {
            "stats_last_nonzero": torch.zeros(D_SAE, dtype=torch.long),
            "latents_activation_frequency": torch.ones(D_SAE),
            "latents_mean_square": torch.zeros(D_SAE),
            "activation": activation,
            "activation_state_dict": {"k": k, "postact_fn": postact} if activation == "TopK" else {},
        }
    )
    torch.save(state, path)
    return p


@pytest.mark.parametrize("postact", ["ReLU", "Identity"])
def test_openai_original_topk(tmp_path, model, postact):
    path = tmp_path / "resid_post_mlp_v5_48" / "autoencoders" / "2.pt"
    p = write_openai(path, postact=postact)
    d = load_dictionary(path, model)
    assert (d.layer, d.site_in, d.activation, d.k, d.input_norm) == (2, "resid_post", "topk", 5, "layer_norm")
    x = inputs(seed=4)
    # openai/sparse_autoencoder model.py, written out
    mu = x.mean(-1, keepdims=True)
    std = (x - mu).std(-1, keepdims=True, ddof=1)
    pre = ((x - mu) / (std + 1e-5) - p["pre_bias"]) @ p["encoder.weight"].T + p["latent_bias"]
    latents = np_topk(pre, 5, rectify=postact == "ReLU")
    assert_close(d.encode(x), latents)
    assert_close(d.reconstruct(x), (latents @ p["decoder.weight"].T + p["pre_bias"]) * std + mu)
    mid = tmp_path / "resid_post_attn_v5_48" / "autoencoders" / "1.pt"
    write_openai(mid)
    assert load_dictionary(mid, model).site_in == "resid_mid"


def test_openai_relu_has_no_normalization(tmp_path, model):
    path = tmp_path / "sae.pt"
    p = write_openai(path, activation="ReLU")
    d = load_dictionary(path, model, layer=0, site="resid_pre")
    x = inputs(seed=5)
    latents = relu((x - p["pre_bias"]) @ p["encoder.weight"].T + p["latent_bias"])
    assert_close(d.reconstruct(x), latents @ p["decoder.weight"].T + p["pre_bias"])


# ---- EleutherAI sparsify cfg.json + sae.safetensors ----------------------------------------
def write_sparsify(folder, *, transcode=False, skip=False, activation="topk", k=5, seed=6, dtype=np.float32):
    folder.mkdir(parents=True)
    g = rng(seed)
    p = {
        "encoder.weight": normal(g, D_SAE, D_IN),
        "encoder.bias": normal(g, D_SAE, scale=0.5),
        "W_dec": normal(g, D_SAE, D_IN),
        "b_dec": normal(g, D_IN, scale=0.5),
    }
    if skip:
        p["W_skip"] = normal(g, D_IN, D_IN, scale=0.2)
    p = {key: v.astype(dtype) for key, v in p.items()}
    save_file(p, folder / "sae.safetensors")
    cfg = {
        "activation": activation,
        "expansion_factor": D_SAE // D_IN,
        "normalize_decoder": True,
        "num_latents": 0,
        "k": k,
        "multi_topk": False,
        "skip_connection": skip,
        "transcode": transcode,
        "d_in": D_IN,
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return {key: v.astype(np.float32) for key, v in p.items()}


def sparsify_forward(p, x, *, transcode, activation, k):
    """sparsify's SparseCoder.encode/decode (+ skip), written out."""
    x_in = x if transcode else x - p["b_dec"]
    pre = relu(x_in @ p["encoder.weight"].T + p["encoder.bias"])
    if activation == "topk":
        acts = np_topk(pre, k)
    else:  # groupmax: the max of each of k contiguous groups
        groups = pre.reshape(*pre.shape[:-1], k, -1)
        winners = groups.argmax(-1)[..., None]
        acts = np.zeros_like(groups)
        np.put_along_axis(acts, winners, np.take_along_axis(groups, winners, -1), -1)
        acts = acts.reshape(pre.shape)
    out = acts @ p["W_dec"] + p["b_dec"]
    if "W_skip" in p:
        out = out + x @ p["W_skip"].T
    return acts, out


@pytest.mark.parametrize(
    "transcode,skip,activation",
    [
        (False, False, "topk"),
        (False, True, "topk"),
        (True, True, "topk"),
        (False, False, "groupmax"),
    ],
)
def test_sparsify(tmp_path, model, transcode, skip, activation):
    folder = tmp_path / ("layers.2.mlp" if transcode else "layers.2")
    p = write_sparsify(folder, transcode=transcode, skip=skip, activation=activation, k=6)
    d = load_dictionary(folder, model)
    assert (d.layer, d.kind) == (2, "transcoder" if transcode else "sae")
    assert d.site_in == ("mlp_in" if transcode else "resid_post")
    x = inputs(seed=6)
    acts, out = sparsify_forward(p, x, transcode=transcode, activation=activation, k=6)
    assert_sparse_but_active(acts)
    assert_close(d.encode(x), acts)
    assert_close(d.reconstruct(x), out)


def test_sparsify_bfloat16_is_kept(tmp_path, model):
    folder = tmp_path / "layers.1"
    p = write_sparsify(folder, dtype=ml_dtypes.bfloat16)
    d = load_dictionary(folder, model)
    assert d.W_dec.dtype == jnp.bfloat16
    x = inputs(seed=7)
    assert_close(d.reconstruct(x), sparsify_forward(p, x, transcode=False, activation="topk", k=5)[1])


# ---- Qwen-Scope layer{n}.sae.pt ------------------------------------------------------------
def test_qwen_scope(tmp_path, model):
    d_sae = 1024  # W1K
    folder = tmp_path / "models--Qwen--SAE-Res-Qwen3-1.7B-Base-W1K-L0_8" / "snapshots" / "abc"
    folder.mkdir(parents=True)
    g = rng(8)
    p = {
        "W_enc": normal(g, d_sae, D_IN),
        "W_dec": normal(g, D_IN, d_sae),
        "b_enc": normal(g, d_sae, scale=0.5),
        "b_dec": normal(g, D_IN, scale=0.5),
    }
    torch.save({k: torch.from_numpy(v) for k, v in p.items()}, folder / "layer3.sae.pt")
    d = load_dictionary(folder / "layer3.sae.pt", model)
    assert (d.layer, d.site_in, d.k, d.name) == (3, "resid_post", 8, "resid-post-1k")
    assert not d.apply_b_dec_to_input
    x = inputs(seed=8)
    acts = np_topk(x @ p["W_enc"].T + p["b_enc"], 8)
    assert_close(d.encode(x), acts)
    assert_close(d.reconstruct(x), acts @ p["W_dec"].T + p["b_dec"])
    # a folder of per-layer files: pick by layer
    assert load_dictionary(folder, model, layer=3).layer == 3


# ---- circuit-tracer layer_{i}.safetensors + config.yaml ------------------------------------
def write_transcoder_set(folder, n_layers=3, *, jumprelu=False, skip=False, transposed_enc=False):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_name": "Qwen/Qwen3-0.6B",
                "model_kind": "transcoder_set",
                "feature_input_hook": "mlp.hook_in",
                "feature_output_hook": "mlp.hook_out",
                "scan": "mwhanna/qwen3-0.6b-transcoders-lowl0",
            }
        )
    )
    params = []
    for layer in range(n_layers):
        g = rng(10 + layer)
        p = {
            "W_enc": normal(g, D_SAE, D_IN),
            "W_dec": normal(g, D_SAE, D_IN),
            "b_enc": normal(g, D_SAE, scale=0.5),
            "b_dec": normal(g, D_IN, scale=0.5),
        }
        if jumprelu:  # some negative thresholds: circuit-tracer's JumpReLU has no ReLU
            p["activation_function.threshold"] = (g.uniform(size=D_SAE) * 1.2 - 0.4).astype(np.float32)
        if skip:
            p["W_skip"] = normal(g, D_IN, D_IN, scale=0.2)
        stored = dict(p, W_enc=p["W_enc"].T.copy()) if transposed_enc else p
        save_file(stored, folder / f"layer_{layer}.safetensors")
        params.append(p)
    return params


@pytest.mark.parametrize(
    "jumprelu,skip,transposed_enc",
    [
        (False, False, False),
        (True, True, False),
        (False, False, True),
    ],
)
def test_circuit_tracer_transcoder_set(tmp_path, model, jumprelu, skip, transposed_enc):
    folder = tmp_path / "qwen3-0.6b-transcoders"
    params = write_transcoder_set(folder, jumprelu=jumprelu, skip=skip, transposed_enc=transposed_enc)
    dset = load_dictionaries(folder, model)
    assert dset.layers == (0, 1, 2) and dset.names == ("transcoder-48",) * 3
    x = inputs(seed=9)
    for d, p in zip(dset, params):
        assert (d.kind, d.site_in, d.site_out) == ("transcoder", "mlp_in", "mlp_out")
        assert d.info.hook_name == f"blocks.{d.layer}.mlp.hook_in"
        pre = x @ p["W_enc"].T + p["b_enc"]
        acts = pre * (pre > p["activation_function.threshold"]) if jumprelu else relu(pre)
        assert_sparse_but_active(acts)
        assert_close(d.encode(x), acts)
        out = acts @ p["W_dec"] + p["b_dec"] + (x @ p["W_skip"].T if skip else 0)
        assert_close(d.reconstruct(x), out)
        np.testing.assert_array_equal(d.key_vectors(), p["W_enc"])
    assert load_dictionary(folder, model, layer=1).layer == 1
    assert load_dictionary(folder / "layer_2.safetensors", model).layer == 2


def test_load_dictionaries_expands_folders_of_dictionaries(tmp_path, model):
    run = tmp_path / "sae-tiny-48"
    for layer in (0, 1, 3):
        write_sparsify(run / f"layers.{layer}", seed=layer)
    (run / "config.json").write_text("{}")  # the run-level config is not a dictionary
    assert load_dictionaries(run, model).layers == (0, 1, 3)
    autoencoders = tmp_path / "resid_post_mlp_v5_48" / "autoencoders"
    for layer in (2, 10):
        write_openai(autoencoders / f"{layer}.pt", seed=layer)
    dset = load_dictionaries(autoencoders, TinyModelConfig(n_layers=12))
    assert dset.layers == (2, 10) and dset.names == ("resid-post-48", "resid-post-48")
    assert load_dictionaries(autoencoders, TinyModelConfig(n_layers=12), layer=10).layers == (10,)
