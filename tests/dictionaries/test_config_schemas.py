"""The configs of sae_lens folders, dictionary_learning, Kissane et al. `hook_z`, cross-layer
transcoders and sae_lens registry entries are typed: a field of the wrong type is one `DictionaryError` naming the file and
the field, raised before any weights are read (the weights files here are not even readable), and
a float is never truncated into an integer."""

import json

import numpy as np
import pytest
import torch
import yaml

from converters import load_dictionary
from converters.dictionaries import registry
from dictionary_helpers import D_IN, D_SAE, D_Z
from qlens_jax.dictionaries import DictionaryError
from test_clt import write_clt
from test_dictionary_errors import saelens_dir
from test_torch_formats import write_dictionary_learning, write_hook_z

UNREADABLE = b"not a weights file"


def _edit_json(path, edit):
    cfg = json.loads(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg))


def _older_dictionary_section(cfg):
    cfg["dictionary"] = {**cfg.pop("trainer"), "activation_dim": "wide"}


def test_saelens_config_is_checked_before_the_weights(tmp_path, model):
    saelens_dir(tmp_path, d_sae="lots")
    (tmp_path / "sae_weights.safetensors").write_bytes(UNREADABLE)
    with pytest.raises(DictionaryError, match=r"cfg\.json: config key 'd_sae' must be an integer, got str 'lots'"):
        load_dictionary(tmp_path, model)


# ---- dictionary_learning: config.json -----------------------------------------------------
@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: c["trainer"].update(dict_size="lots"), "'trainer.dict_size' must be an integer, got str 'lots'"),
        (lambda c: c["trainer"].update(k="abc"), "'trainer.k' must be an integer, got str 'abc'"),
        (
            lambda c: c["trainer"].update(activation_dim=[D_IN]),
            r"'trainer.activation_dim' must be an integer, got list \[",
        ),
        (lambda c: c["trainer"].update(dict_size=12.5), r"'trainer.dict_size' must be an integer, got float 12\.5"),
        (lambda c: c["trainer"].update(layer=1.5), r"'trainer.layer' must be an integer, got float 1\.5"),
        (lambda c: c["trainer"].update(layer=-1), "'trainer.layer' must be at least 0, got -1"),
        (lambda c: c["trainer"].update(submodule_name=7), "'trainer.submodule_name' must be a string, got int 7"),
        (lambda c: c["trainer"].update(dict_class=["AutoEncoderTopK"]), "'trainer.dict_class' must be a string"),
        (lambda c: c.update(trainer="x"), "'trainer' must be a mapping, got str 'x'"),
        (_older_dictionary_section, "'dictionary.activation_dim' must be an integer, got str 'wide'"),
    ],
)
def test_dictionary_learning_config_types(tmp_path, model, edit, match):
    folder = tmp_path / "resid_post_layer_2" / "trainer_0"
    write_dictionary_learning(folder, "AutoEncoderTopK", seed=1)
    _edit_json(folder / "config.json", edit)
    (folder / "ae.pt").write_bytes(UNREADABLE)
    with pytest.raises(DictionaryError, match=r"config\.json: config key " + match):
        load_dictionary(folder, model)


def test_dictionary_learning_integral_floats_and_stored_k(tmp_path, model):
    folder = tmp_path / "resid_post_layer_2" / "trainer_0"
    p = write_dictionary_learning(folder, "AutoEncoderTopK", seed=2)
    _edit_json(folder / "config.json", lambda c: c["trainer"].update(dict_size=float(D_SAE), k=float(p["k"])))
    d = load_dictionary(folder, model)
    assert (d.d_sae, d.k) == (D_SAE, int(p["k"]))
    torch.save(
        {key: torch.from_numpy(np.asarray(value)) for key, value in {**p, "k": np.float32(2.5)}.items()},
        folder / "ae.pt",
    )
    _edit_json(folder / "config.json", lambda c: c["trainer"].pop("k"))
    with pytest.raises(DictionaryError, match=r"ae\.pt: key 'k' must hold one positive integer, got 2\.5"):
        load_dictionary(folder, model)


# ---- Kissane et al. hook_z: {run}_cfg.json ------------------------------------------------
@pytest.mark.parametrize(
    "edit,match",
    [
        (lambda c: c.update(dict_size="lots"), "config key 'dict_size' must be an integer, got str 'lots'"),
        (lambda c: c.update(act_size=[D_Z]), r"config key 'act_size' must be an integer, got list \["),
        (lambda c: c.update(dict_size=12.5), r"config key 'dict_size' must be an integer, got float 12\.5"),
        (lambda c: c.update(layer="1"), "config key 'layer' must be an integer, got str '1'"),
        (lambda c: c.update(act_name=7), "config key 'act_name' must be a string, got int 7"),
        (lambda c: c.update(act_name={"layer": 1}), "config key 'act_name' must be a string, got dict"),
        (lambda c: c.pop("act_name"), "missing config key 'act_name'"),
    ],
)
def test_hook_z_config_types(tmp_path, model, edit, match):
    file_name, _ = write_hook_z(tmp_path, layer=1, seed=3)
    cfg_file = tmp_path / file_name.replace(".pt", "_cfg.json")
    _edit_json(cfg_file, edit)
    (tmp_path / file_name).write_bytes(UNREADABLE)
    with pytest.raises(DictionaryError, match=r"_cfg\.json: " + match):
        load_dictionary(tmp_path / file_name, model)


def test_hook_z_integral_float_sizes(tmp_path, model):
    file_name, _ = write_hook_z(tmp_path, layer=1, seed=4)
    _edit_json(
        tmp_path / file_name.replace(".pt", "_cfg.json"),
        lambda c: c.update(act_size=float(D_Z), dict_size=float(D_SAE), layer=1.0),
    )
    d = load_dictionary(tmp_path / file_name, model)
    assert (d.d_in, d.d_sae, d.layer) == (D_Z, D_SAE, 1)


# ---- cross-layer transcoders: config.yaml -------------------------------------------------
@pytest.mark.parametrize(
    "edit,match",
    [
        ({"feature_input_hook": 7}, "'feature_input_hook' must be a string, got int 7"),
        ({"feature_output_hook": {"hook": "mlp"}}, "'feature_output_hook' must be a string, got dict"),
        ({"model_kind": ["cross_layer_transcoder"]}, "'model_kind' must be a string, got list"),
        ({"model_name": 2.5}, "'model_name' must be a string, got float 2.5"),
    ],
)
def test_clt_config_types(tmp_path, model, edit, match):
    write_clt(tmp_path, jumprelu=False, n_layers=1)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**cfg, **edit}))
    (tmp_path / "W_enc_0.safetensors").write_bytes(UNREADABLE)
    with pytest.raises(DictionaryError, match=r"config\.yaml: config key " + match):
        load_dictionary(tmp_path / "W_enc_0.safetensors", model)


def test_clt_null_hooks_take_the_defaults(tmp_path, model):
    write_clt(tmp_path, jumprelu=False)
    cfg = yaml.safe_load((tmp_path / "config.yaml").read_text())
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({**cfg, "feature_input_hook": None, "model_kind": None}))
    d = load_dictionary(tmp_path, model, layer=1)
    assert (d.site_in, d.site_out, d.info.hook_name) == ("resid_mid", "mlp_out", "blocks.1.hook_resid_mid")


# ---- sae_lens registry entries: pretrained_saes.yaml ---------------------------------------
def _release(**fields):
    saes = [{"id": "layer_1", "path": "layer_1/sae", "neuronpedia": "m/1-x"}, {"id": 7, "path": 3}]
    return {"repo_id": "org/saes", "model": "tiny", "conversion_func": "sae_lens", "saes": saes, **fields}


@pytest.mark.parametrize(
    "release,match",
    [
        (_release(repo_id=7), ": registry key 'repo_id' must be a string, got int 7"),
        (_release(saes="layer_1"), ": registry key 'saes' must be a list, got str"),
        (_release(saes=["layer_1"]), " SAE #0: must be a mapping, got str"),
        (
            _release(saes=[{"id": "layer_1", "path": ["a"]}]),
            " SAE #0: registry key 'path' must be a string or an integer",
        ),
        (
            _release(saes=[{"id": "layer_1", "path": "p", "norm_scaling_factor": "big"}]),
            " SAE #0: registry key 'norm_scaling_factor' must be a finite number, got str 'big'",
        ),
        (_release(saes=[{"path": "p"}]), " SAE #0: missing registry key 'id'"),
        (_release(config_overrides="x"), ": registry key 'config_overrides' must be a mapping, got str 'x'"),
        (_release(config_overrides={"d_sae": "lots"}), ": config override 'd_sae' must be an integer, got str 'lots'"),
        (_release(config_overrides={"d_sae": 12.5}), r": config override 'd_sae' must be an integer, got float 12\.5"),
        (_release(config_overrides={"hook_name": 7}), ": config override 'hook_name' must be a string, got int 7"),
        ("a string", ": must be a mapping, got str"),
    ],
)
def test_registry_entries_are_typed(tmp_path, model, monkeypatch, release, match):
    path = tmp_path / "pretrained_saes.yaml"
    path.write_text(yaml.safe_dump({"r": release}))
    monkeypatch.setattr(registry, "_registry_file", lambda: path)
    with pytest.raises(DictionaryError, match=r"pretrained_saes\.yaml release 'r'" + match) as err:
        load_dictionary("r:layer_1", model)
    assert "\n" not in str(err.value)


def test_registry_ids_and_paths_may_be_integers(tmp_path, monkeypatch):
    path = tmp_path / "pretrained_saes.yaml"
    path.write_text(yaml.safe_dump({"r": _release(config_overrides={"d_sae": float(D_SAE)})}))
    monkeypatch.setattr(registry, "_registry_file", lambda: path)
    entry = registry.lookup("r", "7")
    assert (entry.id, entry.path, entry.config_overrides) == ("r:7", "3", {"d_sae": float(D_SAE)})
    assert registry.lookup("r", "layer_1").neuronpedia_id == "m/1-x"
