"""sae_lens registry release ids, resolved offline through a Hugging Face cache built here in
the cache's own layout (`models--org--name/refs/main` + `snapshots/<commit>/...`), with
`HF_HUB_OFFLINE` set: no network. Compared with the files' formulas and with sae_lens's own
`SAE.from_pretrained(release, sae_id)` reading the same cache."""

import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from converters import load_dictionaries, load_dictionary
from converters.dictionaries import registry
from dictionary_helpers import D_IN, TinyModelConfig, assert_close, assert_sparse_but_active, inputs
from qlens_jax.dictionaries import DictionaryError
from qlens_jax.errors import InputError
from qlens_jax.job.inputs import check_dictionary_source
from test_clt import write_clt
from test_format_parity import write_gemma_scope_2
from test_torch_formats import dl_forward, write_dictionary_learning

COMMIT = "0123456789abcdef0123456789abcdef01234567"
GEMMA = ("gemma-scope-2b-pt-res-canonical", "layer_2/width_16k/canonical")
SAEBENCH = ("sae_bench_pythia70m_sweep_topk_ctx128_0730", "blocks.3.hook_resid_post__trainer_0")
CLT = ("mntss-gemma-2-2b-2.5m-clt-as-per-layer", "layer_1")
GEMMA_3 = ("gemma-scope-2-270m-pt-res", "layer_12_width_16k_l0_medium")
MISTRAL = (
    "mistral-7b-res-wg",
    "blocks.8.hook_resid_pre",
)  # a sae_lens folder; the registry overrides its normalization


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline; returns `snapshot(repo_id) -> folder`."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def snapshot(repo_id: str):
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(COMMIT)
        folder = repo / "snapshots" / COMMIT
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    return snapshot


def entry_path(release: str, sae_id: str) -> str:
    return registry.lookup(release, sae_id).path


def jumprelu_params(d_sae: int, seed: int) -> dict:
    """Gemma Scope keys, `d_sae` wide; decoder rows small so that outputs stay of order 1."""
    g = np.random.default_rng(seed)
    return {
        "W_enc": (g.normal(size=(D_IN, d_sae)) * 0.3).astype(np.float32),
        "W_dec": (g.normal(size=(d_sae, D_IN)) * 0.02).astype(np.float32),
        "b_enc": (g.normal(size=d_sae) * 0.5).astype(np.float32),
        "b_dec": (g.normal(size=D_IN) * 0.5).astype(np.float32),
        "threshold": (g.uniform(size=d_sae) * 0.8).astype(np.float32),
    }


def test_gemma_scope_release(hub_cache):
    model = TinyModelConfig(model_type="gemma2")
    folder = hub_cache("google/gemma-scope-2b-pt-res") / entry_path(*GEMMA)
    folder.mkdir(parents=True)
    p = jumprelu_params(16384, seed=0)  # the width the release names (16k)
    np.savez(folder / "params.npz", **p)
    d = load_dictionary(GEMMA[0], model, sae_id=GEMMA[1])
    assert (d.layer, d.site_in, d.name) == (2, "resid_post", "resid-post-16k")
    assert d.info.source == ":".join(GEMMA) and d.info.neuronpedia_id == "gemma-2-2b/2-gemmascope-res-16k"
    x = inputs(seed=1)
    pre = x @ p["W_enc"] + p["b_enc"]
    acts = np.maximum(pre, 0) * (pre > p["threshold"])
    assert_sparse_but_active(acts)
    assert_close(d.reconstruct(x), acts.astype(np.float64) @ p["W_dec"] + p["b_dec"])
    (same,) = load_dictionaries([":".join(GEMMA)], model)
    np.testing.assert_array_equal(np.asarray(same.W_enc), np.asarray(d.W_enc))


def test_saebench_release_matches_sae_lens_from_pretrained(hub_cache, sae_lens, monkeypatch):
    model = TinyModelConfig(model_type="gpt_neox")
    folder = hub_cache("canrager/lm_sae") / entry_path(*SAEBENCH)
    p = write_dictionary_learning(folder, "AutoEncoderTopK", seed=5, layer=3)
    native = load_dictionary(":".join(SAEBENCH), model)
    assert (native.info.format, native.layer, native.site_in, native.k) == ("dictionary_learning", 3, "resid_post", 6)
    x = inputs(seed=2)
    acts, out = dl_forward("AutoEncoderTopK", p, x)
    assert_close(native.reconstruct(x), out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae = sae_lens.SAE.from_pretrained(*SAEBENCH, device="cpu")
    with torch.no_grad():
        assert_close(native.encode(x), sae.encode(torch.from_numpy(x)).numpy())
        assert_close(native.reconstruct(x), sae(torch.from_numpy(x)).numpy())
    # the other route, sae_lens's loader function + conversion of its config and state dict
    monkeypatch.setattr(registry, "NATIVE", frozenset())
    through = load_dictionary(SAEBENCH[0], model, sae_id=SAEBENCH[1])
    assert (through.info.format, through.activation, through.k) == ("saelens", "topk", 6)
    assert_close(through.encode(x), acts)
    assert_close(through.reconstruct(x), out)


def test_clt_release_per_layer(hub_cache):
    model = TinyModelConfig(model_type="gemma2", n_layers=26)
    layers = write_clt(hub_cache("mntss/clt-gemma-2-2b-2.5M"), jumprelu=True, n_layers=26)
    d = load_dictionary(":".join(CLT), model)
    assert (d.name, d.layer, d.site_in, d.info.neuronpedia_id) == (
        "clt-own-layer-48",
        1,
        "resid_mid",
        "gemma-2-2b/1-clt-hp",
    )
    w_enc, b_enc, _, threshold, w_dec = layers[1]
    np.testing.assert_array_equal(np.asarray(d.W_dec), w_dec[:, 0])
    x = inputs(seed=3)
    pre = x @ w_enc.T + b_enc
    assert_close(d.encode(x), pre * (pre > threshold))


def test_gemma_scope_2_release(hub_cache):
    model = TinyModelConfig(model_type="gemma3_text", n_layers=18)
    folder = hub_cache("google/gemma-scope-2-270m-pt") / entry_path(*GEMMA_3)
    write_gemma_scope_2(folder, kind="sae", hook_in="model.layers.12.output")
    p = jumprelu_params(16384, seed=7)  # the width the id names
    save_file(
        {("w_enc" if k == "W_enc" else "w_dec" if k == "W_dec" else k): v for k, v in p.items()},
        folder / "params.safetensors",
    )
    d = load_dictionary(":".join(GEMMA_3), model)
    assert (d.info.format, d.layer, d.site_in, d.info.neuronpedia_id) == (
        "gemma_scope_2",
        12,
        "resid_post",
        "gemma-3-270m/12-gemmascope-2-res-16k",
    )
    x = inputs(seed=4)
    pre = x @ p["W_enc"] + p["b_enc"]
    acts = np.maximum(pre, 0) * (pre > p["threshold"])
    assert_close(d.reconstruct(x), acts.astype(np.float64) @ p["W_dec"] + p["b_dec"])


def test_sae_lens_release_with_config_overrides(hub_cache, sae_lens):
    model = TinyModelConfig(model_type="mistral", n_layers=10)
    folder = hub_cache("JoshEngels/Mistral-7B-Residual-Stream-SAEs") / entry_path(*MISTRAL)
    folder.mkdir(parents=True)
    g = np.random.default_rng(6)
    w = {
        "W_enc": g.normal(size=(D_IN, 48)) * 0.3,
        "W_dec": g.normal(size=(48, D_IN)) * 0.3,
        "b_enc": g.normal(size=48) * 0.5,
        "b_dec": g.normal(size=D_IN) * 0.5,
    }
    save_file({k: v.astype(np.float32) for k, v in w.items()}, str(folder / "sae_weights.safetensors"))
    cfg = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": 48,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.8.hook_resid_pre"},
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    d = load_dictionary(":".join(MISTRAL), model)
    assert (d.info.format, d.layer, d.site_in, d.input_norm) == ("saelens", 8, "resid_pre", "constant_norm_rescale")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sae = sae_lens.SAE.from_pretrained(*MISTRAL, device="cpu")
    x = inputs(seed=5)
    with torch.no_grad():
        assert_close(d.encode(x), sae.encode(torch.from_numpy(x)).numpy())
        assert_close(d.reconstruct(x), sae(torch.from_numpy(x)).numpy())


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_registry_bad_input(hub_cache, model, monkeypatch):
    with pytest.raises(DictionaryError) as err:
        load_dictionary("gemma-scope-2b-pt-res-canonicl", model, sae_id=GEMMA[1])
    assert "unknown sae_lens release 'gemma-scope-2b-pt-res-canonicl'" in one_line(err)
    assert "close releases: gemma-scope-2b-pt-res-canonical" in one_line(err)
    with pytest.raises(DictionaryError) as err:
        load_dictionary(":".join((GEMMA[0], "layer_2/width_16k/canonicl")), model)
    assert "has no SAE id 'layer_2/width_16k/canonicl'" in one_line(err)
    assert "no local path 'gemma-scope-2b-pt-res-canonical:layer_2/width_16k/canonicl' exists" in one_line(err)
    assert "layer_2/width_16k/canonical" in one_line(err)
    with pytest.raises(DictionaryError) as err:  # known, but not in the (empty) cache
        load_dictionary(*GEMMA[:1], model, sae_id=GEMMA[1])
    text = one_line(err)
    assert "not in the Hugging Face cache" in text and "HF_HUB_OFFLINE" in text
    assert f"hf download google/gemma-scope-2b-pt-res --include '{entry_path(*GEMMA)}*'" in text
    with pytest.raises(DictionaryError) as err:  # a bare release: which id to add
        load_dictionaries(CLT[0], model)
    assert f"name one as '{CLT[0]}:SAE_ID', e.g. '{CLT[0]}:layer_0'" in one_line(err)
    with pytest.raises(DictionaryError, match="temporal dictionaries are not supported: its codes attend"):
        load_dictionary("temporal-sae-gemma-2-2b:blocks.12.hook_resid_post", model)
    monkeypatch.setattr(registry, "NATIVE", frozenset())  # the sae_lens-loader route says the same
    with pytest.raises(DictionaryError, match="not in the Hugging Face cache.*pass the local path"):
        load_dictionary(*SAEBENCH[:1], model, sae_id=SAEBENCH[1])
    monkeypatch.setattr(registry.importlib.util, "find_spec", lambda name, *a: None)  # sae_lens not installed
    with pytest.raises(DictionaryError) as err:
        load_dictionary(":".join(GEMMA), model)
    assert "pip install sae-lens" in one_line(err) and "local folder or file" in one_line(err)


def test_cli_checks_registry_ids_first(tmp_path):
    check_dictionary_source(":".join(GEMMA))  # known: accepted without reading any file
    for bad, fragment in (
        (f"{GEMMA[0]}:layer_99/width_16k/canonical", "has no SAE id 'layer_99"),
        ("no-such-release:layer_1", "unknown sae_lens release 'no-such-release'"),
    ):
        with pytest.raises(InputError, match=f"--dictionary {bad}: .*{fragment}"):
            check_dictionary_source(bad)
    from qlens_jax.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("some text")
    (tmp_path / "model").mkdir()
    out = tmp_path / "out"
    code = main(
        [
            "signatures",
            "--model",
            str(tmp_path / "model"),
            "--dictionary",
            "no-such-release:layer_1",
            "--corpus",
            str(corpus),
            "--out",
            str(out),
        ]
    )
    assert code == 2 and not out.exists()


def test_lookup_reads_the_registry_as_sae_lens_does(sae_lens):
    from sae_lens.loading.pretrained_saes_directory import get_config_overrides, get_pretrained_saes_directory

    directory = get_pretrained_saes_directory()
    for release, sae_id in (GEMMA, SAEBENCH, CLT, GEMMA_3, MISTRAL, ("llama_scope_lxr_8x", "l3r_8x")):
        entry, theirs = registry.lookup(release, sae_id), directory[release]
        assert (entry.repo_id, entry.path, entry.conversion_func, entry.model) == (
            theirs.repo_id,
            theirs.saes_map[sae_id],
            theirs.conversion_func,
            theirs.model,
        )
        assert entry.neuronpedia_id == theirs.neuronpedia_id[sae_id]
        assert entry.norm_scaling_factor == theirs.norm_scaling_factor.get(sae_id)
        assert (entry.config_overrides or {}) == {
            k: v for k, v in get_config_overrides(release, sae_id).items() if k != "neuronpedia_id"
        }


def test_registry_id_parsing(tmp_path):
    assert registry.parse("gemma-scope-2b-pt-res-canonical:layer_0/width_16k/canonical") == (
        "gemma-scope-2b-pt-res-canonical",
        "layer_0/width_16k/canonical",
    )
    for not_an_id in (
        "google/gemma-scope-2b-pt-res/layer_0",
        "hf://org/repo:x",
        "./local:dir",
        ":x",
        "x:",
        "C:\\saes\\sae",
        "D:/saes",
    ):
        assert registry.parse(not_an_id) is None
    local = tmp_path / "odd:name"
    local.mkdir()
    assert registry.parse(str(local)) is None
