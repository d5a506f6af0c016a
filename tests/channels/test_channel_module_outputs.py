"""The channel analysis on dictionaries at module outputs: an `attn_out` / `mlp_out` SAE's value
vectors are added straight to the residual, so they are the queries of the residual point they
write into (`resid_mid` / `resid_post` of their block); a `z` dictionary's are not residual
vectors and are refused by name before any work, in the library and on the command line."""

import json

import numpy as np
import pytest

import converters
import qlens_jax.lens
from qlens_jax.channels import channel_data
from qlens_jax.cli import main
from qlens_jax.errors import InputError
from qlens_jax.lens import transport_operators
from world import shared_module_world, write_saelens


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return shared_module_world(tmp_path_factory)


@pytest.fixture(scope="module")
def inputs(world, tmp_path_factory):
    """The model, the world's attn_out (layer 1) and mlp_out (layer 0) SAEs, their residual
    twins (same weights, at the point each writes into: resid_mid[1], resid_post[0]) and a
    token sample."""
    from world import MODULE_DICTIONARIES

    model = converters.load_model(world.model)
    seeds = {folder: seed for seed, (folder, *_) in enumerate(MODULE_DICTIONARIES, start=11)}
    twins_dir = tmp_path_factory.mktemp("twins")
    twins = [
        write_saelens(
            twins_dir / "resid-mid-l1", world.d_model, hook="blocks.1.hook_resid_mid", seed=seeds["sae-attn-out-l1"]
        ),
        write_saelens(
            twins_dir / "resid-post-l0", world.d_model, hook="blocks.0.hook_resid_post", seed=seeds["sae-mlp-out-l0"]
        ),
    ]
    module = converters.load_dictionaries([str(world.dictionaries[1]), str(world.dictionaries[3])], model)
    residual = converters.load_dictionaries([str(t) for t in twins], model)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, world.vocab_size, size=(4, 10)).astype(np.int32)
    return model, module, residual, tokens, np.ones(tokens.shape, bool)


def test_attn_out_and_mlp_out_are_queries_of_the_residual_point_they_write_into(inputs):
    model, module, residual, tokens, mask = inputs
    assert [(d.site_in, d.layer) for d in module] == [("attn_out", 1), ("mlp_out", 0)]
    assert [(d.site_in, d.layer) for d in residual] == [("resid_mid", 1), ("resid_post", 0)]
    operators = transport_operators(model, tokens, mask, sweeps=("first_order",))
    ours = channel_data(model, module, tokens, mask, n_features=12, seed=5, operators=operators)
    twins = channel_data(model, residual, tokens, mask, n_features=12, seed=5, operators=operators)
    assert [(p.source, p.destination) for p in ours.pairs] == [(0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    assert [(p.source, p.destination) for p in ours.pairs] == [(p.source, p.destination) for p in twins.pairs]
    for a, b in zip(ours.sources, twins.sources):
        assert a.write_point == b.write_point
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
        np.testing.assert_array_equal(a.queries, b.queries)
    for a, b in zip(ours.responses, twins.responses):
        assert np.abs(a).max() > 0
        np.testing.assert_array_equal(a, b)


def test_z_dictionaries_are_refused_by_name_before_any_work(world, inputs, monkeypatch):
    model, module, _, tokens, mask = inputs
    (z,) = converters.load_dictionaries([str(world.dictionaries[2])], model)
    assert z.site_in == "z" and z.name == "z-40"

    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep ran before the z dictionary was refused")

    monkeypatch.setattr(qlens_jax.lens, "transport_operators", no_sweep)
    with pytest.raises(InputError, match=r"dictionary 'z-40' \(layer 2\) writes z, the heads' outputs .* drop it"):
        channel_data(model, [*module, z], tokens, mask, n_features=12)


def test_parallel_blocks_are_refused_by_name_before_any_work(monkeypatch):
    from splice_reference import make_dictionary
    from tiny_models import build_hf_model

    model = converters.load_model(build_hf_model("neox-parallel"))
    dictionary = make_dictionary(model.config.d_model, 1, "resid_post", "resid_post", "sae", 3, n=16)

    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep ran before the parallel model was refused")

    monkeypatch.setattr(qlens_jax.lens, "transport_operators", no_sweep)
    tokens = np.arange(3, 19, dtype=np.int32).reshape(2, 8)
    with pytest.raises(InputError, match="gpt_neox model are parallel .* sequential blocks only"):
        channel_data(model, [dictionary], tokens, n_features=4)


def channel_args(world, out, dictionaries, *extra):
    args = [
        "channels",
        "--model",
        str(world.model),
        "--corpus",
        str(world.corpus_text),
        "--num-samples",
        "6",
        "--max-length",
        "10",
        "--features-per-layer",
        "30",
        "--rank",
        "4",
        "--permutations",
        "99",
        "--no-plots",
        "--no-control",
        "--quiet",
        "--out",
        str(out),
    ]
    for d in dictionaries:
        args += ["--dictionary", str(d)]
    return args + list(extra)


def test_channels_command_on_module_outputs(world, tmp_path, capsys):
    z_out = tmp_path / "with-z"
    assert main(channel_args(world, z_out, world.dictionaries)) == 2
    err = capsys.readouterr().err
    assert err.startswith("qlens channels: error: dictionary 'z-40' (layer 2) writes z") and "\n" not in err.strip()
    assert not z_out.exists()
    out = tmp_path / "modules"
    kept = [d for i, d in enumerate(world.dictionaries) if i != 2]  # resid_post[1], attn_out[1], mlp_out[0]
    assert main(channel_args(world, out, kept)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["maps"] == [
        "resid-post-40:1->2",
        "resid-post-40:1->3",
        "attn-out-40:1->2",
        "attn-out-40:1->3",
        "mlp-out-40:0->1",
        "mlp-out-40:0->2",
        "mlp-out-40:0->3",
    ]
