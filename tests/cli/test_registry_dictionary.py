"""`qlens signatures --dictionary RELEASE:SAE_ID`: a sae_lens registry id resolved offline
through a Hugging Face cache built here (Kissane et al.'s GPT-2 `hook_z` release, whose files
this package reads natively), end to end on the tiny GPT-2 world."""

import json

import numpy as np
import torch

from converters import load_dictionary, load_model
from qlens_jax.cli import main
from qlens_jax.io import hashing
from world import base_args, drop

RELEASE, SAE_ID = "gpt2-small-hook-z-kk", "blocks.0.hook_z"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_hook_z(cache, d_z: int, d_sae: int = 40):
    """The release's layer-0 files in the cache layout: `{run}.pt` and `{run}_cfg.json`."""
    from converters.dictionaries import registry

    repo = cache / "models--ckkissane--attn-saes-gpt2-small-all-layers"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    folder = repo / "snapshots" / COMMIT
    folder.mkdir(parents=True)
    file_name = registry.lookup(RELEASE, SAE_ID).path
    g = np.random.default_rng(0)
    weights = {
        "W_enc": g.normal(size=(d_z, d_sae)),
        "W_dec": g.normal(size=(d_sae, d_z)),
        "b_enc": g.normal(size=d_sae) * 0.5,
        "b_dec": g.normal(size=d_z) * 0.5,
    }
    torch.save({k: torch.from_numpy(v.astype(np.float32)) for k, v in weights.items()}, folder / file_name)
    cfg = {"act_name": SAE_ID.replace("hook_z", "attn.hook_z"), "act_size": d_z, "dict_size": d_sae, "layer": 0}
    (folder / file_name.replace(".pt", "_cfg.json")).write_text(json.dumps(cfg))
    return folder / file_name


def test_signatures_with_a_registry_id(world, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    local = cached_hook_z(tmp_path / "hub", d_z=world.d_model)  # GPT-2: n_heads x head_dim = d_model
    out = tmp_path / "run"
    args = drop(base_args(world, out, "--lenses", "logit_lens_value", "--no-self-check"), "--dictionary")
    args += ["--dictionary", f"{RELEASE}:{SAE_ID}"]
    assert main(args) == 0
    (recorded,) = json.loads((out / "run.json").read_text())["inputs"]["dictionaries"]
    assert (recorded["source"], recorded["format"], recorded["site_in"]) == (f"{RELEASE}:{SAE_ID}", "hook_z", "z")
    same = load_dictionary(local, load_model(world.model))
    assert recorded["sha256"] == hashing.dictionary_hash(same)
    assert (out / "signatures.parquet").is_file()
