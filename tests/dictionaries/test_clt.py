"""circuit-tracer cross-layer transcoders loaded per layer: files in circuit-tracer's
`to_safetensors` layout, compared with its forward pass written out in numpy and with
sae_lens's `mntss_clt_layer_transcoder` loader (which sums the decoders over target layers)."""

import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import save_file

from converters import load_dictionaries, load_dictionary
from dictionary_helpers import D_IN, D_SAE, TinyModelConfig, assert_close, assert_sparse_but_active, inputs
from qlens_jax.dictionaries import DictionaryError
from saelens_loaders import sae_lens_from_repo

N_LAYERS = 4


def write_clt(folder, *, jumprelu: bool, n_layers: int = N_LAYERS, input_hook="hook_resid_mid"):
    """A CLT of `n_layers` layers; returns per layer (W_enc [d_sae, d], b_enc, b_dec, threshold,
    W_dec [d_sae, n_layers - l, d])."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "model_name": "google/gemma-2-2b",
                "model_kind": "cross_layer_transcoder",
                "feature_input_hook": input_hook,
                "feature_output_hook": "hook_mlp_out",
            }
        )
    )
    layers = []
    for layer in range(n_layers):
        g = np.random.default_rng(20 + layer)
        p = {
            f"W_enc_{layer}": (g.normal(size=(D_SAE, D_IN)) * 0.3).astype(np.float32),
            f"b_enc_{layer}": (g.normal(size=D_SAE) * 0.5).astype(np.float32),
            f"b_dec_{layer}": (g.normal(size=D_IN) * 0.5).astype(np.float32),
        }
        if jumprelu:  # some negative: circuit-tracer's JumpReLU keeps pre where pre > threshold, no ReLU
            p[f"threshold_{layer}"] = (g.uniform(size=D_SAE) * 1.2 - 0.4).astype(np.float32)
        save_file(p, folder / f"W_enc_{layer}.safetensors")
        w_dec = (g.normal(size=(D_SAE, n_layers - layer, D_IN)) * 0.3).astype(np.float32)
        save_file({f"W_dec_{layer}": w_dec}, folder / f"W_dec_{layer}.safetensors")
        layers.append(
            (p[f"W_enc_{layer}"], p[f"b_enc_{layer}"], p[f"b_dec_{layer}"], p.get(f"threshold_{layer}"), w_dec)
        )
    return layers


@pytest.mark.parametrize("jumprelu", [False, True])
def test_clt_per_layer(tmp_path, model, jumprelu):
    folder = tmp_path / "clt-tiny"
    layers = write_clt(folder, jumprelu=jumprelu)
    dset = load_dictionaries(folder, model)
    assert dset.layers == tuple(range(N_LAYERS))
    assert dset.names == ("clt-own-layer-48",) * N_LAYERS
    x = inputs(seed=11)
    for d, (w_enc, b_enc, b_dec, threshold, w_dec) in zip(dset, layers):
        assert (d.kind, d.site_in, d.site_out, d.info.format) == ("transcoder", "resid_mid", "mlp_out", "clt")
        pre = x @ w_enc.T + b_enc
        acts = pre * (pre > threshold) if jumprelu else np.maximum(pre, 0)
        assert_sparse_but_active(acts)
        assert_close(d.encode(x), acts)
        np.testing.assert_array_equal(np.asarray(d.value_vectors()), w_dec[:, 0])  # d_{l->l} only
        np.testing.assert_array_equal(np.asarray(d.key_vectors()), w_enc)
        # circuit-tracer's output at the transcoder's own layer, from its own features only
        assert_close(d.reconstruct(x), acts @ w_dec[:, 0] + b_dec)
    assert load_dictionary(folder, model, layer=2).layer == 2
    assert load_dictionary(folder / "W_enc_3.safetensors", model).layer == 3


def test_clt_against_sae_lens_loader(tmp_path, monkeypatch, sae_lens, model):
    layers = write_clt(tmp_path, jumprelu=False)
    for layer in (0, 2):
        d = load_dictionary(tmp_path / f"W_enc_{layer}.safetensors", model)
        sae = sae_lens_from_repo(
            sae_lens,
            monkeypatch,
            "mntss_clt_layer_huggingface_loader",
            tmp_path,
            "mntss/clt-gemma-2-2b-2.5M",
            str(layer),
        )
        theirs = {k: v.numpy() for k, v in sae.state_dict().items()}
        np.testing.assert_array_equal(np.asarray(d.W_enc), theirs["W_enc"])
        np.testing.assert_array_equal(np.asarray(d.b_enc), theirs["b_enc"])
        np.testing.assert_array_equal(np.asarray(d.b_dec), theirs["b_dec"])
        # sae_lens keeps the sum over target layers; we keep the own layer's decoder
        assert_close(theirs["W_dec"], layers[layer][4].sum(axis=1))
        x = inputs(seed=12)
        with torch.no_grad():
            assert_close(d.encode(x), sae.encode(torch.from_numpy(x)).numpy())
        assert sae.cfg.metadata.hook_name == d.info.hook_name


def test_clt_refusals(tmp_path, model):
    write_clt(tmp_path / "short", jumprelu=False, n_layers=3)
    with pytest.raises(DictionaryError, match="spans 3 layers, but the model has 4"):
        load_dictionaries(tmp_path / "short", model)
    write_clt(tmp_path / "clt", jumprelu=False)
    with pytest.raises(DictionaryError, match="pass layer="):
        load_dictionary(tmp_path / "clt", model)
    with pytest.raises(DictionaryError, match="file name 'W_enc_1.safetensors' gives layer 1"):
        load_dictionary(tmp_path / "clt" / "W_enc_1.safetensors", model, layer=2)
    assert load_dictionary(tmp_path / "clt", TinyModelConfig(), layer=1).layer == 1
