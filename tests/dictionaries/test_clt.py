"""circuit-tracer cross-layer transcoders loaded per layer: files in circuit-tracer's
`to_safetensors` layout, compared with its forward pass written out in numpy and with
sae_lens's `mntss_clt_layer_transcoder` loader (which sums the decoders over target layers)."""

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from clt_files import write_clt_folder
from converters import load_dictionaries, load_dictionary
from dictionary_helpers import D_IN, D_SAE, TinyModelConfig, assert_close, assert_sparse_but_active, inputs
from qlens_jax.dictionaries import CrossLayerTranscoder, DictionaryError
from saelens_loaders import sae_lens_from_repo

N_LAYERS = 4


def write_clt(folder, *, jumprelu: bool, n_layers: int = N_LAYERS, input_hook="hook_resid_mid", d_model=D_IN):
    """A CLT of `n_layers` layers; returns per layer (W_enc [d_sae, d], b_enc, b_dec, threshold,
    W_dec [d_sae, n_layers - l, d])."""
    write_clt_folder(folder, n_layers, d_model, D_SAE, jumprelu=jumprelu, input_hook=input_hook)
    layers = []
    for layer in range(n_layers):
        p = load_file(folder / f"W_enc_{layer}.safetensors")
        w_dec = load_file(folder / f"W_dec_{layer}.safetensors")[f"W_dec_{layer}"]
        layers.append(
            (p[f"W_enc_{layer}"], p[f"b_enc_{layer}"], p[f"b_dec_{layer}"], p.get(f"threshold_{layer}"), w_dec)
        )
    return layers


@pytest.mark.parametrize("jumprelu", [False, True])
def test_clt_per_layer(tmp_path, model, jumprelu):
    folder = tmp_path / "clt-tiny"
    layers = write_clt(folder, jumprelu=jumprelu)
    dset = load_dictionaries(folder, model, cross_layer=False)
    assert dset.layers == tuple(range(N_LAYERS))
    assert dset.names == ("clt-own-layer-48",) * N_LAYERS
    assert not any(isinstance(d, CrossLayerTranscoder) for d in dset)
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
    assert load_dictionary(folder, model, layer=2, cross_layer=False).layer == 2
    assert load_dictionary(folder / "W_enc_3.safetensors", model, cross_layer=False).layer == 3


def test_clt_whole(tmp_path, model):
    """Loaded whole (the default), each layer keeps every decoder it writes, in file order."""
    folder = tmp_path / "clt-tiny"
    layers = write_clt(folder, jumprelu=True)
    dset = load_dictionaries(folder, model)
    assert dset.names == ("clt-48",) * N_LAYERS
    x = inputs(seed=13)
    for d, (w_enc, b_enc, b_dec, threshold, w_dec) in zip(dset, layers):
        assert isinstance(d, CrossLayerTranscoder) and d.info.architecture == "clt"
        assert d.write_layers == tuple(range(d.layer, N_LAYERS))
        np.testing.assert_array_equal(np.asarray(d.cross_layer_decoders()), w_dec)
        np.testing.assert_array_equal(np.asarray(d.value_vectors()), w_dec[:, 0])
        np.testing.assert_array_equal(np.asarray(d.b_dec), b_dec)
        pre = x @ w_enc.T + b_enc
        assert_close(d.encode(x), pre * (pre > threshold))
    single = load_dictionary(folder / "W_enc_1.safetensors", model)
    assert isinstance(single, CrossLayerTranscoder) and single.n_write == N_LAYERS - 1


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


@pytest.mark.parametrize("cross_layer", [False, True])
def test_clt_refusals(tmp_path, model, cross_layer):
    write_clt(tmp_path / "short", jumprelu=False, n_layers=3)
    with pytest.raises(DictionaryError, match="W_dec_0.safetensors: 'W_dec_0' .* spans 3 layers, but the model has 4"):
        load_dictionaries(tmp_path / "short", model, cross_layer=cross_layer)
    write_clt(tmp_path / "narrow", jumprelu=False, d_model=D_IN - 2)
    with pytest.raises(DictionaryError, match="W_enc_0.safetensors.* d_model"):
        load_dictionaries(tmp_path / "narrow", model, cross_layer=cross_layer)
    write_clt(tmp_path / "clt", jumprelu=False)
    with pytest.raises(DictionaryError, match="pass layer="):
        load_dictionary(tmp_path / "clt", model)
    with pytest.raises(DictionaryError, match="file name 'W_enc_1.safetensors' gives layer 1"):
        load_dictionary(tmp_path / "clt" / "W_enc_1.safetensors", model, layer=2)
    assert load_dictionary(tmp_path / "clt", TinyModelConfig(), layer=1).layer == 1
