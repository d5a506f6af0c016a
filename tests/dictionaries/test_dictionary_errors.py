"""Bad inputs give a clear `DictionaryError` naming the file/key (or both sides of a mismatch)."""

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from converters import load_dictionaries, load_dictionary
from dictionary_helpers import D_IN, D_SAE, TinyModelConfig
from qlens_jax.dictionaries import DictionaryError
from test_format_parity import (
    gemma_scope_params,
    write_gemma_scope_2,
    write_openai,
    write_sparsify,
    write_transcoder_set,
)
from test_module_output_sites import write_llama_scope


def saelens_dir(path, *, arch="standard", hook="blocks.2.hook_resid_post", tensors=None, **cfg):
    """A sae_lens v6 folder written by hand (the parity tests cover sae_lens's own writer)."""
    path.mkdir(parents=True, exist_ok=True)
    g = np.random.default_rng(0)
    base = {
        "W_enc": g.normal(size=(D_IN, D_SAE)),
        "W_dec": g.normal(size=(D_SAE, D_IN)),
        "b_enc": g.normal(size=D_SAE),
        "b_dec": g.normal(size=D_IN),
    }
    base = {k: v.astype(np.float32) for k, v in base.items()}
    save_file(tensors if tensors is not None else base, path / "sae_weights.safetensors")
    config = {
        "architecture": arch,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": hook},
        **cfg,
    }
    (path / "cfg.json").write_text(json.dumps(config))
    return base


# ---- files --------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(tmp_path, model, bad):
    w = saelens_dir(tmp_path)
    w["W_dec"][5, 3] = bad
    save_file(w, tmp_path / "sae_weights.safetensors")
    with pytest.raises(DictionaryError, match=r"sae_weights\.safetensors.*'W_dec'.*NaN/Inf.*\(5, 3\)"):
        load_dictionary(tmp_path, model)


def test_missing_key(tmp_path, model):
    w = saelens_dir(tmp_path)
    del w["b_enc"]
    save_file(w, tmp_path / "sae_weights.safetensors")
    with pytest.raises(DictionaryError, match=r"sae_weights\.safetensors: missing key 'b_enc'"):
        load_dictionary(tmp_path, model)


def test_unexpected_key(tmp_path, model):
    w = saelens_dir(tmp_path)
    save_file({**w, "mystery": np.zeros(3, np.float32)}, tmp_path / "sae_weights.safetensors")
    with pytest.raises(DictionaryError, match="unexpected keys.*mystery"):
        load_dictionary(tmp_path, model)


def test_wrong_shape(tmp_path, model):
    w = saelens_dir(tmp_path)
    save_file({**w, "b_enc": np.zeros(D_SAE + 1, np.float32)}, tmp_path / "sae_weights.safetensors")
    with pytest.raises(DictionaryError, match=r"'b_enc' has shape \(49,\), expected \[d_sae\]"):
        load_dictionary(tmp_path, model)


def test_transposed_matrix_is_named(tmp_path, model):
    w = saelens_dir(tmp_path)
    save_file({**w, "W_enc": w["W_enc"].T.copy()}, tmp_path / "sae_weights.safetensors")
    with pytest.raises(DictionaryError, match="'W_enc'.*transposed"):
        load_dictionary(tmp_path, model)


def test_truncated_safetensors(tmp_path, model):
    saelens_dir(tmp_path)
    data = (tmp_path / "sae_weights.safetensors").read_bytes()
    (tmp_path / "sae_weights.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(DictionaryError, match=r"sae_weights\.safetensors: cannot read"):
        load_dictionary(tmp_path, model)


def test_corrupt_config(tmp_path, model):
    saelens_dir(tmp_path)
    (tmp_path / "cfg.json").write_text('{"d_in": 16,')
    with pytest.raises(DictionaryError, match=r"cfg\.json: not valid JSON"):
        load_dictionary(tmp_path, model)


def test_missing_config_key(tmp_path, model):
    saelens_dir(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["d_sae"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(DictionaryError, match=r"cfg\.json: missing config key 'd_sae'"):
        load_dictionary(tmp_path, model)


def test_truncated_npz_and_pt(tmp_path, model):
    folder = tmp_path / "layer_0" / "width_48"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **gemma_scope_params(0))
    data = (folder / "params.npz").read_bytes()
    (folder / "params.npz").write_bytes(data[:100])
    with pytest.raises(DictionaryError, match=r"params\.npz: cannot read"):
        load_dictionary(folder, model, site="resid_post")
    pt = tmp_path / "ae" / "0.pt"
    write_openai(pt)
    pt.write_bytes(pt.read_bytes()[:200])
    with pytest.raises(DictionaryError, match=r"0\.pt: cannot read PyTorch checkpoint"):
        load_dictionary(pt, model, layer=0, site="resid_post")


def test_a_file_of_a_folder_reads_the_folder(tmp_path, model):
    saelens_dir(tmp_path / "sae")
    assert load_dictionary(tmp_path / "sae" / "cfg.json", model).info.source == str(tmp_path / "sae")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(DictionaryError, match="not a dictionary file"):
        load_dictionary(tmp_path / "notes.txt", model)


def test_missing_weights_and_unknown_layouts(tmp_path, model):
    (tmp_path / "cfg.json").write_text("{}")
    with pytest.raises(DictionaryError, match="cfg.json but neither sae_weights"):
        load_dictionary(tmp_path, model)
    with pytest.raises(DictionaryError, match="no such file or directory"):
        load_dictionary(tmp_path / "nope", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DictionaryError, match="no dictionary found"):
        load_dictionary(tmp_path / "empty", model)


# ---- config types -------------------------------------------------------------------------
def _edit_json(path, edit):
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: c.update(d_sae="lots"), "'d_sae' must be an integer, got str 'lots'"),
        (lambda c: c.update(architecture="topk", k="abc"), "'k' must be an integer, got str 'abc'"),
        (lambda c: c.update(d_in=[128]), r"'d_in' must be an integer, got list \[128\]"),
        (lambda c: c.update(metadata="x"), "'metadata' must be a mapping, got str 'x'"),
        (lambda c: c["metadata"].update(hook_name=7), "'metadata.hook_name' must be a string, got int 7"),
        (lambda c: c.update(d_sae=12.5), "'d_sae' must be an integer, got float 12.5"),
        (lambda c: c.update(apply_b_dec_to_input="false"), "'apply_b_dec_to_input' must be true or false"),
        (lambda c: c.update(d_sae=0), "'d_sae' must be at least 1, got 0"),
    ],
)
def test_saelens_config_types_are_checked(tmp_path, model, edit, match):
    saelens_dir(tmp_path)
    _edit_json(tmp_path / "cfg.json", edit)
    with pytest.raises(DictionaryError, match=r"cfg\.json: config key " + match):
        load_dictionary(tmp_path, model)


def test_an_integral_float_is_the_integer_it_is(tmp_path, model):
    saelens_dir(tmp_path)
    _edit_json(tmp_path / "cfg.json", lambda c: c.update(d_sae=float(D_SAE)))
    assert load_dictionary(tmp_path, model).d_sae == D_SAE


def _gemma_scope_2(folder):
    write_gemma_scope_2(folder, kind="sae", hook_in="model.layers.1.output")
    _edit_json(folder / "config.json", lambda c: c.update(affine_connection="no"))
    return folder, r"config\.json: config key 'affine_connection' must be true or false, got str 'no'"


def _llama_scope(folder):
    write_llama_scope(folder, hook_in="blocks.1.hook_resid_post", jump_relu_threshold="abc")
    return folder, r"hyperparams\.json: config key 'jump_relu_threshold' must be a finite number, got str 'abc'"


def _llama_scope_norms(folder):
    write_llama_scope(folder, hook_in="blocks.1.hook_resid_post", dataset_average_activation_norm={"in": [2.0]})
    return folder, r"config key 'dataset_average_activation_norm\.in' must be a finite number, got list"


def _sparsify(folder):
    write_sparsify(folder / "layers.1")
    _edit_json(folder / "layers.1" / "cfg.json", lambda c: c.update(k=2.5))
    return folder / "layers.1", r"cfg\.json: config key 'k' must be an integer, got float 2\.5"


def _circuit_tracer(folder):
    write_transcoder_set(folder, n_layers=1)
    (folder / "config.yaml").write_text("model_kind: transcoder_set\nfeature_input_hook: 7\n")
    return folder / "layer_0.safetensors", r"config\.yaml: config key 'feature_input_hook' must be a string, got int 7"


def _openai(folder):
    path = folder / "0.pt"
    write_openai(path)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "activation_state_dict": "x"}, path)
    return path, r"0\.pt: config key 'activation_state_dict' must be a mapping, got str 'x'"


@pytest.mark.parametrize(
    "write", [_gemma_scope_2, _llama_scope, _llama_scope_norms, _sparsify, _circuit_tracer, _openai]
)
def test_every_format_checks_its_config_types(tmp_path, model, write):
    source, match = write(tmp_path / "d")
    with pytest.raises(DictionaryError, match=match):
        load_dictionary(source, model, **({"layer": 0, "site": "resid_post"} if write is _openai else {}))


def test_caller_options_are_typed(tmp_path, model):
    saelens_dir(tmp_path)
    with pytest.raises(DictionaryError, match="load_dictionary: option 'layer' must be an integer, got str '2'"):
        load_dictionary(tmp_path, model, layer="2")
    with pytest.raises(DictionaryError, match="option 'norm_scaling_factor' must be a finite number, got float nan"):
        load_dictionary(tmp_path, model, norm_scaling_factor=float("nan"))
    torch.save(
        {
            "W_enc": torch.zeros(64, D_IN),
            "W_dec": torch.zeros(D_IN, 64),
            "b_enc": torch.zeros(64),
            "b_dec": torch.zeros(D_IN),
        },
        tmp_path / "layer2.sae.pt",
    )
    with pytest.raises(DictionaryError, match="option 'k' must be an integer, got float 2.5"):
        load_dictionary(tmp_path / "layer2.sae.pt", model, k=2.5)


def test_circuit_tracer_stored_k_must_be_one_integer(tmp_path, model):
    folder = tmp_path / "set"
    write_transcoder_set(folder, n_layers=1)
    (folder / "config.yaml").write_text(
        "model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\n"
        "feature_output_hook: mlp.hook_out\nactivation: topk\n"
    )
    from safetensors.numpy import load_file

    weights = load_file(folder / "layer_0.safetensors")
    save_file({**weights, "k": np.asarray([2.5], np.float32)}, folder / "layer_0.safetensors")
    with pytest.raises(DictionaryError, match=r"layer_0\.safetensors: key 'k' must hold one integer, got \[2\.5\]"):
        load_dictionary(folder / "layer_0.safetensors", model)
    save_file({**weights, "k": np.asarray([3], np.int64)}, folder / "layer_0.safetensors")
    assert load_dictionary(folder / "layer_0.safetensors", model).k == 3


# ---- architectures and options ------------------------------------------------------------
@pytest.mark.parametrize(
    "arch,match",
    [
        ("temporal", "not supported: its codes attend"),
        ("matching_pursuit", "iterative pursuit"),
        ("tanh_sae", "unknown architecture 'tanh_sae'"),
    ],
)
def test_unsupported_architectures(tmp_path, model, arch, match):
    saelens_dir(tmp_path, arch=arch)
    with pytest.raises(DictionaryError, match=match):
        load_dictionary(tmp_path, model)


@pytest.mark.parametrize(
    "cfg,match",
    [
        ({"normalize_activations": "covariance_whitening"}, "covariance_whitening"),
        ({"reshape_activations": "hook_z"}, "reshape_activations='hook_z' flattens the heads.*reads resid_post"),
        ({"reshape_activations": "hook_q"}, "unknown reshape_activations='hook_q'"),
    ],
)
def test_unsupported_options(tmp_path, model, cfg, match):
    saelens_dir(tmp_path, **cfg)
    with pytest.raises(DictionaryError, match=match):
        load_dictionary(tmp_path, model)


def test_option_that_does_not_apply(tmp_path, model):
    saelens_dir(tmp_path)
    with pytest.raises(DictionaryError, match=r"option\(s\) \['k'\] do not apply to saelens"):
        load_dictionary(tmp_path, model, k=5)
    with pytest.raises(TypeError, match="unknown option"):
        load_dictionary(tmp_path, model, colour="blue")


# ---- placement ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "hook,match",
    [
        ("blocks.2.attn.hook_result", "attention/MLP-internal point"),
        ("blocks.2.mlp.hook_post", "attention/MLP-internal point"),
        ("blocks.2.ln2.hook_normalized", "an SAE reads and writes one of"),
        ("hook_embed", "neither a TransformerLens"),
    ],
)
def test_unsupported_sites(tmp_path, model, hook, match):
    saelens_dir(tmp_path, hook=hook)
    with pytest.raises(DictionaryError, match=match):
        load_dictionary(tmp_path, model)


def test_requested_layer_disagrees_with_hook_name(tmp_path, model):
    saelens_dir(tmp_path, hook="blocks.2.hook_resid_post")
    expected = r"layer=3\) gives layer 3, but hook_name 'blocks\.2\.hook_resid_post' gives layer 2"
    with pytest.raises(DictionaryError, match=expected):
        load_dictionary(tmp_path, model, layer=3)
    with pytest.raises(DictionaryError, match="site 'resid_pre'.*hook_name.*site 'resid_post'"):
        load_dictionary(tmp_path, model, site="resid_pre")


def test_tl_and_hf_hook_names_must_agree(tmp_path, model):
    saelens_dir(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["metadata"]["hf_hook_name"] = "model.layers.4"
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    expected = "hook_name 'blocks.2.hook_resid_post' gives layer 2, but hf_hook_name 'model.layers.4' gives layer 4"
    with pytest.raises(DictionaryError, match=expected):
        load_dictionary(tmp_path, model)


def test_layer_must_be_known(tmp_path, model):
    saelens_dir(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    del cfg["metadata"]["hook_name"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(DictionaryError, match="cannot tell the dictionary's layer.*pass layer="):
        load_dictionary(tmp_path, model)
    d = load_dictionary(tmp_path, model, layer=1, site="resid_mid")
    assert (d.layer, d.site_in) == (1, "resid_mid")


def test_gemma_scope_path_layer_and_release_checks(tmp_path, model):
    folder = tmp_path / "layer_2" / "width_48"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **gemma_scope_params(0))
    with pytest.raises(DictionaryError, match="cannot tell the dictionary's site"):
        load_dictionary(folder, model)
    with pytest.raises(DictionaryError, match="folder name 'layer_2' gives layer 2"):
        load_dictionary(folder, model, layer=1, site="resid_post")
    wide = tmp_path / "layer_2" / "width_16k"
    wide.mkdir(parents=True)
    np.savez(wide / "params.npz", **gemma_scope_params(0))
    with pytest.raises(DictionaryError, match="width '16k' but the weights have d_sae=48"):
        load_dictionary(wide, model, site="resid_post")
    embedding = tmp_path / "gemma-scope-2b-pt-res" / "embedding" / "width_48"
    embedding.mkdir(parents=True)
    np.savez(embedding / "params.npz", **gemma_scope_params(0))
    with pytest.raises(DictionaryError, match="embedding SAEs are not a Query Lens site"):
        load_dictionary(embedding, model, layer=0)


def test_gemma_scope_2_checks(tmp_path):
    gemma = TinyModelConfig(model_type="gemma3_text")
    folder = tmp_path / "layer_1_width_48_l0_small"
    write_gemma_scope_2(folder, kind="sae", hook_in="model.layers.2.output")
    expected = "hf_hook_point_in 'model.layers.2.output' gives layer 2, but the folder name"
    with pytest.raises(DictionaryError, match=expected):
        load_dictionary(folder, gemma)
    before_norm = tmp_path / "attn"
    write_gemma_scope_2(before_norm, kind="sae", hook_in="model.layers.1.self_attn.o_proj.output")
    with pytest.raises(DictionaryError, match="BEFORE gemma3_text's post_attention_layernorm"):
        load_dictionary(before_norm, gemma)
    lying = tmp_path / "tc"
    write_gemma_scope_2(
        lying,
        kind="transcoder",
        affine=True,
        hook_in="model.layers.1.pre_feedforward_layernorm.output",
        hook_out="model.layers.1.post_feedforward_layernorm.output",
    )
    cfg = json.loads((lying / "config.json").read_text())
    (lying / "config.json").write_text(json.dumps({**cfg, "affine_connection": False}))
    expected = "affine_connection is False but .* has 'affine_skip_connection'"
    with pytest.raises(DictionaryError, match=expected):
        load_dictionary(lying, gemma)


def test_gemma_scope_2_cross_layer_transcoder_refused(tmp_path):
    folder = tmp_path / "clt"
    write_gemma_scope_2(
        folder,
        kind="transcoder",
        hook_in="model.layers.1.pre_feedforward_layernorm.output",
        hook_out="model.layers.1.post_feedforward_layernorm.output",
    )
    from safetensors.numpy import load_file

    p = load_file(folder / "params.safetensors")
    p["w_dec"] = np.stack([p["w_dec"]] * 3, axis=1)
    save_file(p, folder / "params.safetensors")
    with pytest.raises(DictionaryError, match="cross-layer transcoder"):
        load_dictionary(folder, TinyModelConfig(model_type="gemma3_text"))


def test_sparsify_checks(tmp_path, model):
    write_sparsify(tmp_path / "layers.1.self_attn", transcode=True)
    with pytest.raises(DictionaryError, match="'layers.1.self_attn' with transcode=True is not an MLP transcoder"):
        load_dictionary(tmp_path / "layers.1.self_attn", model)
    write_sparsify(tmp_path / "layers.1.mlp")
    with pytest.raises(DictionaryError, match="'layers.1.mlp.output'.*BEFORE gemma3_text's post_feedforward_layernorm"):
        load_dictionary(tmp_path / "layers.1.mlp", TinyModelConfig(model_type="gemma3_text"))
    with pytest.raises(DictionaryError, match="hookpoint 'layers.1.mlp'.*pass the model"):
        load_dictionary(tmp_path / "layers.1.mlp")
    write_sparsify(tmp_path / "layers.1.mlp.act_fn")
    with pytest.raises(DictionaryError, match="hookpoint 'layers.1.mlp.act_fn' is not a Query Lens site"):
        load_dictionary(tmp_path / "layers.1.mlp.act_fn", model)
    folder = tmp_path / "layers.2"
    write_sparsify(folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    (folder / "cfg.json").write_text(json.dumps({**cfg, "embed_skip": True}))
    with pytest.raises(DictionaryError, match="embed_skip"):
        load_dictionary(folder, model)


def test_qwen_scope_needs_k(tmp_path, model):
    p = {
        "W_enc": torch.zeros(64, D_IN),
        "W_dec": torch.zeros(D_IN, 64),
        "b_enc": torch.zeros(64),
        "b_dec": torch.zeros(D_IN),
    }
    torch.save(p, tmp_path / "layer2.sae.pt")
    with pytest.raises(DictionaryError, match="pass k="):
        load_dictionary(tmp_path / "layer2.sae.pt", model)
    assert load_dictionary(tmp_path / "layer2.sae.pt", model, k=4).k == 4
    torch.save({**p, "W_enc": torch.zeros(D_IN, 64)}, tmp_path / "layer2.sae.pt")
    with pytest.raises(DictionaryError, match=r"'W_enc'.*\[d_sae, d_in\].*transposed"):
        load_dictionary(tmp_path / "layer2.sae.pt", model, k=4)


def test_circuit_tracer_square_encoder_is_ambiguous(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "config.yaml").write_text(
        "model_kind: transcoder_set\nfeature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\n"
    )
    square = {
        "W_enc": np.zeros((D_IN, D_IN), np.float32),
        "W_dec": np.zeros((D_IN, D_IN), np.float32),
        "b_enc": np.zeros(D_IN, np.float32),
        "b_dec": np.zeros(D_IN, np.float32),
    }
    save_file(square, folder / "layer_0.safetensors")
    with pytest.raises(DictionaryError, match="'W_enc' is square.*refusing to guess"):
        load_dictionary(folder / "layer_0.safetensors", TinyModelConfig())


def test_circuit_tracer_checks(tmp_path, model):
    folder = tmp_path / "set"
    write_transcoder_set(folder, n_layers=2)
    with pytest.raises(DictionaryError, match="pass layer="):
        load_dictionary(folder, model)
    with pytest.raises(DictionaryError, match="no layer_7.safetensors"):
        load_dictionary(folder, model, layer=7)
    (folder / "config.yaml").write_text("model_kind: cross_layer_transcoder\n")
    with pytest.raises(DictionaryError, match="cross_layer_transcoder"):
        load_dictionary(folder, model, layer=0)


# ---- against the model --------------------------------------------------------------------
def test_d_in_must_match_d_model(tmp_path):
    saelens_dir(tmp_path)
    with pytest.raises(DictionaryError, match="d_in=16 but the model has d_model=32"):
        load_dictionary(tmp_path, TinyModelConfig(d_model=32))


def test_layer_must_be_in_range(tmp_path):
    saelens_dir(tmp_path, hook="blocks.6.hook_resid_post")
    with pytest.raises(DictionaryError, match="layer 6 but the model has layers 0..3"):
        load_dictionary(tmp_path, TinyModelConfig(n_layers=4))


def test_hf_hook_meaning_depends_on_model_type(tmp_path):
    saelens_dir(
        tmp_path,
        hook="model.layers.1.post_attention_layernorm.output",
        arch="transcoder",
        d_out=D_IN,
        apply_b_dec_to_input=False,
    )
    d = load_dictionary(tmp_path, TinyModelConfig(model_type="qwen3"))
    assert (d.site_in, d.site_out) == ("mlp_in", "mlp_out")
    # in Gemma 2/3 it is the attention's post-norm: attn_out, which no transcoder reads
    with pytest.raises(DictionaryError, match="a transcoder reads .* got attn_out -> mlp_out"):
        load_dictionary(tmp_path, TinyModelConfig(model_type="gemma3_text"))
    with pytest.raises(DictionaryError, match="pass the model"):
        load_dictionary(tmp_path)


def test_load_dictionaries_refuses_duplicates(tmp_path, model):
    saelens_dir(tmp_path / "a")
    saelens_dir(tmp_path / "b")
    with pytest.raises(DictionaryError, match="both 'resid-post-48' at layer 2"):
        load_dictionaries([tmp_path / "a", tmp_path / "b"], model)
    dset = load_dictionaries([tmp_path / "a", (tmp_path / "b", {"name": "other-48"})], model)
    assert dset.names == ("resid-post-48", "other-48")
