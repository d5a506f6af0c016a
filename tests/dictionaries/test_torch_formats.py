"""PyTorch-file formats (dictionary_learning `ae.pt`, Goodfire, DeepSeek-R1-distill, Kissane et
al. `hook_z`): files written in the published layout, loaded by `converters.load_dictionary`,
compared with the owner's forward pass written out in numpy and with sae_lens's own loader
for the format run on the same files."""

import json

import ml_dtypes
import numpy as np
import pytest
import torch

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
    np_topk,
)
from qlens_jax.dictionaries import DictionaryError
from saelens_loaders import sae_lens_from_repo


def relu(a):
    return np.maximum(a, 0)


def normal(g, *shape, scale=0.3):
    return (g.normal(size=shape) * scale).astype(np.float32)


def save_torch(path, tensors: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in tensors.items()}, path)


# ---- dictionary_learning ae.pt + config.json -----------------------------------------------
def dl_state(dict_class: str, seed: int) -> dict:
    """A seeded state dict of `dict_class` with the keys and orientations that class saves."""
    g = np.random.default_rng(seed)
    linear = {"encoder.weight": normal(g, D_SAE, D_IN), "decoder.weight": normal(g, D_IN, D_SAE)}
    params = {
        "W_enc": normal(g, D_IN, D_SAE),
        "b_enc": normal(g, D_SAE, scale=0.5),
        "W_dec": normal(g, D_SAE, D_IN),
        "b_dec": normal(g, D_IN, scale=0.5),
    }
    k_and_threshold = {"k": np.asarray(6, np.int32), "threshold": np.asarray(0.35, np.float32)}
    return {
        "AutoEncoder": {**linear, "encoder.bias": normal(g, D_SAE, scale=0.5), "bias": normal(g, D_IN, scale=0.5)},
        "AutoEncoderNew": {
            **linear,
            "encoder.bias": normal(g, D_SAE, scale=0.5),
            "decoder.bias": normal(g, D_IN, scale=0.5),
        },
        "GatedAutoEncoder": {
            **linear,
            "decoder_bias": normal(g, D_IN, scale=0.5),
            "gate_bias": normal(g, D_SAE, scale=0.5),
            "mag_bias": normal(g, D_SAE, scale=0.5),
            "r_mag": normal(g, D_SAE, scale=0.2),
        },
        "JumpReluAutoEncoder": {**params, "threshold": (g.uniform(size=D_SAE) * 0.8).astype(np.float32)},
        "AutoEncoderTopK": {
            **linear,
            "encoder.bias": normal(g, D_SAE, scale=0.5),
            "b_dec": normal(g, D_IN, scale=0.5),
            **k_and_threshold,
        },
        "BatchTopKSAE": {
            **linear,
            "encoder.bias": normal(g, D_SAE, scale=0.5),
            "b_dec": normal(g, D_IN, scale=0.5),
            **k_and_threshold,
        },
        "MatryoshkaBatchTopKSAE": {
            **params,
            **k_and_threshold,
            "group_sizes": np.asarray([8, 16, D_SAE - 24], np.int64),
        },
    }[dict_class]


def dl_forward(dict_class: str, p: dict, x: np.ndarray):
    """dictionary_learning's `encode` / `decode` of each class (inference mode), written out."""
    if dict_class == "AutoEncoder":
        acts = relu((x - p["bias"]) @ p["encoder.weight"].T + p["encoder.bias"])
        return acts, acts @ p["decoder.weight"].T + p["bias"]
    if dict_class == "AutoEncoderNew":
        acts = relu(x @ p["encoder.weight"].T + p["encoder.bias"])
        return acts, acts @ p["decoder.weight"].T + p["decoder.bias"]
    if dict_class == "GatedAutoEncoder":
        x_enc = (x - p["decoder_bias"]) @ p["encoder.weight"].T
        acts = (x_enc + p["gate_bias"] > 0) * relu(np.exp(p["r_mag"]) * x_enc + p["mag_bias"])
        return acts, acts @ p["decoder.weight"].T + p["decoder_bias"]
    if dict_class == "JumpReluAutoEncoder":
        pre = x @ p["W_enc"] + p["b_enc"]
        acts = relu(pre * (pre > p["threshold"]))
        return acts, acts @ p["W_dec"] + p["b_dec"]
    if dict_class == "AutoEncoderTopK":
        acts = np_topk(relu((x - p["b_dec"]) @ p["encoder.weight"].T + p["encoder.bias"]), int(p["k"]))
        return acts, acts @ p["decoder.weight"].T + p["b_dec"]
    if dict_class == "BatchTopKSAE":
        post = relu((x - p["b_dec"]) @ p["encoder.weight"].T + p["encoder.bias"])
        acts = post * (post > p["threshold"])
        return acts, acts @ p["decoder.weight"].T + p["b_dec"]
    post = relu((x - p["b_dec"]) @ p["W_enc"] + p["b_enc"])  # MatryoshkaBatchTopKSAE
    acts = post * (post > p["threshold"])
    return acts, acts @ p["W_dec"] + p["b_dec"]


def write_dictionary_learning(folder, dict_class: str, seed: int, layer: int = 2) -> dict:
    p = dl_state(dict_class, seed)
    save_torch(folder / "ae.pt", p)
    trainer = {
        "dict_class": dict_class,
        "trainer_class": "T",
        "activation_dim": D_IN,
        "dict_size": D_SAE,
        "layer": layer,
        "lm_name": "EleutherAI/pythia-70m-deduped",
        "submodule_name": f"resid_post_layer_{layer}",
    }
    if "k" in p:
        trainer["k"] = int(p["k"])
    (folder / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"ctx_len": 128}}))
    return p


SAE_LENS_READS = (
    "AutoEncoder",
    "GatedAutoEncoder",
    "JumpReluAutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
)


@pytest.mark.parametrize("dict_class", SAE_LENS_READS + ("AutoEncoderNew",))
def test_dictionary_learning(tmp_path, monkeypatch, sae_lens, model, dict_class):
    repo, folder_name = tmp_path / "lm_sae", "pythia70m_sweep_0730/resid_post_layer_2/trainer_0"
    p = write_dictionary_learning(repo / folder_name, dict_class, seed=len(dict_class))
    d = load_dictionary(repo / folder_name, model)
    assert (d.kind, d.layer, d.site_in, d.info.architecture) == ("sae", 2, "resid_post", dict_class)
    x = inputs(seed=3)
    acts, out = dl_forward(dict_class, p, x)
    assert_sparse_but_active(acts)
    assert_close(d.encode(x), acts)
    assert_close(d.reconstruct(x), out)
    assert_close(load_dictionary(repo / folder_name / "ae.pt", model).reconstruct(x), out)
    if dict_class in SAE_LENS_READS:  # sae_lens's dictionary_learning_1 loader on the same files
        sae = sae_lens_from_repo(
            sae_lens, monkeypatch, "dictionary_learning_sae_huggingface_loader_1", repo, "canrager/lm_sae", folder_name
        )
        xt = torch.from_numpy(x)
        with torch.no_grad():
            assert_close(d.encode(x), sae.encode(xt).numpy())
            assert_close(d.reconstruct(x), sae(xt).numpy())
        for ours, theirs in (("W_enc", "W_enc"), ("W_dec", "W_dec"), ("b_dec", "b_dec")):
            np.testing.assert_array_equal(np.asarray(getattr(d, ours)), sae.state_dict()[theirs].numpy())


def test_dictionary_learning_placement_and_refusals(tmp_path, model):
    marks = tmp_path / "pythia-70m-deduped" / "mlp_out_layer1" / "10_48"
    write_dictionary_learning(marks, "AutoEncoder", seed=1, layer=1)
    cfg = json.loads((marks / "config.json").read_text())
    del cfg["trainer"]["submodule_name"]
    (marks / "config.json").write_text(json.dumps(cfg))
    assert (load_dictionary(marks, model).site_in, load_dictionary(marks, model).layer) == ("mlp_out", 1)
    with pytest.raises(DictionaryError, match="trainer.layer 1.*layer 3|layer 3.*trainer.layer 1"):
        load_dictionary(marks, model, layer=3)
    odd = tmp_path / "odd" / "resid_post_layer_2" / "trainer_0"
    write_dictionary_learning(odd, "AutoEncoder", seed=2)
    cfg = json.loads((odd / "config.json").read_text())
    cfg["trainer"]["dict_class"] = "CrossCoder"
    (odd / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DictionaryError, match="dict_class 'CrossCoder' is not supported"):
        load_dictionary(odd, model)
    extra = tmp_path / "extra" / "resid_post_layer_2" / "trainer_0"
    p = write_dictionary_learning(extra, "BatchTopKSAE", seed=3)
    save_torch(extra / "ae.pt", {**p, "activation_rescale_factor": np.ones(D_SAE, np.float32)})
    with pytest.raises(DictionaryError, match="unexpected keys \\['activation_rescale_factor'\\]"):
        load_dictionary(extra, model)
    embed = tmp_path / "pythia" / "embed" / "10_48"
    write_dictionary_learning(embed, "AutoEncoder", seed=4, layer=0)
    cfg = json.loads((embed / "config.json").read_text())
    del cfg["trainer"]["submodule_name"]
    (embed / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DictionaryError, match="embedding"):
        load_dictionary(embed, model)


# ---- Goodfire and DeepSeek-R1-distill: one torch file with two nn.Linear ---------------------
def linear_pair_state(encoder: str, decoder: str, seed: int, dtype=np.float32) -> dict:
    g = np.random.default_rng(seed)
    p = {
        f"{encoder}.weight": normal(g, D_SAE, D_IN),
        f"{encoder}.bias": normal(g, D_SAE, scale=0.5),
        f"{decoder}.weight": normal(g, D_IN, D_SAE),
        f"{decoder}.bias": normal(g, D_IN, scale=0.5),
    }
    return {k: v.astype(dtype) for k, v in p.items()}


CASES = {  # format -> (repo id, file name, modules, sae_lens loader, stored dtype)
    "goodfire": (
        "Goodfire/Llama-3.1-8B-Instruct-SAE-l19",
        "Llama-3.1-8B-Instruct-SAE-l19.pth",
        ("encoder_linear", "decoder_linear"),
        "get_goodfire_huggingface_loader",
        np.float32,
    ),
    "deepseek_r1": (
        "qresearch/DeepSeek-R1-Distill-Llama-8B-SAE-l19",
        "DeepSeek-R1-Distill-Llama-8B-SAE-l19.pt",
        ("encoder", "decoder"),
        "deepseek_r1_sae_huggingface_loader",
        ml_dtypes.bfloat16,
    ),
}


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_linear_pair_files(tmp_path, monkeypatch, sae_lens, fmt):
    repo_id, file_name, (encoder, decoder), loader, dtype = CASES[fmt]
    model = TinyModelConfig(model_type="llama", n_layers=20)
    p = linear_pair_state(encoder, decoder, seed=7, dtype=dtype)
    state = {
        k: torch.from_numpy(v.astype(np.float32)).to(torch.bfloat16 if dtype != np.float32 else torch.float32)
        for k, v in p.items()
    }
    (tmp_path / file_name).parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, tmp_path / file_name)
    d = load_dictionary(tmp_path / file_name, model)
    assert (d.info.format, d.layer, d.site_in, d.apply_b_dec_to_input) == (fmt, 19, "resid_post", False)
    assert d.W_enc.dtype == np.dtype(dtype)
    f = {k: v.astype(np.float32) for k, v in p.items()}
    x = inputs(seed=8)
    acts = relu(x @ f[f"{encoder}.weight"].T + f[f"{encoder}.bias"])
    assert_sparse_but_active(acts)
    assert_close(d.encode(x), acts)
    assert_close(d.reconstruct(x), acts @ f[f"{decoder}.weight"].T + f[f"{decoder}.bias"])
    sae = sae_lens_from_repo(
        sae_lens,
        monkeypatch,
        loader,
        tmp_path,
        repo_id,
        file_name,
        cfg_overrides={"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32"},
    )
    with torch.no_grad():
        assert_close(d.reconstruct(x), sae(torch.from_numpy(x)).numpy())
        assert_close(d.encode(x), sae.encode(torch.from_numpy(x)).numpy())


def test_torch_file_of_unknown_layout_is_refused(tmp_path, model):
    save_torch(tmp_path / "mystery.pt", {"enc": np.zeros((2, 2), np.float32)})
    with pytest.raises(DictionaryError, match="keys \\['enc'\\], which is none of the layouts"):
        load_dictionary(tmp_path / "mystery.pt", model)


# ---- Kissane et al. GPT-2 hook_z: {run}.pt + {run}_cfg.json ---------------------------------
def write_hook_z(folder, layer: int, seed: int) -> tuple[str, dict]:
    run = f"gpt2-small_L{layer}_Hcat_z_lr1.20e-03_l11.80e+00_ds{D_SAE}_bs4096_dc1.00e-06_rsanthropic_rie25000_nr4_v9"
    g = np.random.default_rng(seed)
    p = {
        "W_enc": normal(g, D_Z, D_SAE),
        "W_dec": normal(g, D_SAE, D_Z),
        "b_enc": normal(g, D_SAE, scale=0.5),
        "b_dec": normal(g, D_Z, scale=0.5),
    }
    save_torch(folder / f"{run}.pt", p)
    cfg = {
        "act_name": f"blocks.{layer}.attn.hook_z",
        "act_size": D_Z,
        "dict_size": D_SAE,
        "layer": layer,
        "model_name": "gpt2-small",
        "site": "z",
        "l1_coeff": 1.8,
        "enc_dtype": "fp32",
    }
    (folder / f"{run}_cfg.json").write_text(json.dumps(cfg))
    return f"{run}.pt", p


def test_hook_z(tmp_path, monkeypatch, sae_lens, model):
    file_name, p = write_hook_z(tmp_path, layer=1, seed=9)
    d = load_dictionary(tmp_path / file_name, model)
    assert (d.layer, d.site_in, d.d_in, d.info.format) == (1, "z", D_Z, "hook_z")
    z = inputs(shape=(2, 5, D_Z), seed=10)
    acts = relu((z - p["b_dec"]) @ p["W_enc"] + p["b_enc"])
    assert_sparse_but_active(acts)
    assert_close(d.encode(z), acts)
    assert_close(d.reconstruct(z), acts @ p["W_dec"] + p["b_dec"])
    sae = sae_lens_from_repo(
        sae_lens,
        monkeypatch,
        "connor_rob_hook_z_huggingface_loader",
        tmp_path,
        "ckkissane/attn-saes-gpt2-small-all-layers",
        file_name,
    )
    heads = torch.from_numpy(z.reshape(2, 5, N_HEADS, D_HEAD))  # sae_lens reads hook_z per head
    with torch.no_grad():
        assert_close(d.encode(z), sae.encode(heads).numpy())
        assert_close(d.reconstruct(z), sae(heads).numpy().reshape(2, 5, D_Z))
    with pytest.raises(DictionaryError, match="act_name 'blocks.1.attn.hook_z'.*layer 2|layer 2.*act_name"):
        load_dictionary(tmp_path / file_name, model, layer=2)
