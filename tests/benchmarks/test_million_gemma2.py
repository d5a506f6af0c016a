"""The million-feature Gemma-2-2B layer (`benchmarks.million --size gemma2-2b`): its shape is
Gemma-2-2B's, its plan fits 24 GiB, and the slice measurement and extrapolation run at test size."""

import pytest

from benchmarks import builders, million, sizes


def test_the_shape_is_gemma_2_2b():
    """Parameters counted against transformers' own Gemma-2 model of the published config,
    built on the meta device (no memory)."""
    import equinox as eqx
    import jax
    import numpy as np
    import torch
    import transformers

    from qlens_jax.models import init_transformer

    shape = sizes.GEMMA2_2B
    config = builders.gemma2_model_config(shape)
    skeleton = eqx.filter_eval_shape(init_transformer, config, jax.random.key(0))
    # weights only: `meta` holds per-layer constants (attention scale, window, RoPE frequencies)
    ours = sum(
        int(np.prod(x.shape))
        for path, x in jax.tree_util.tree_leaves_with_path(skeleton)
        if ".meta" not in jax.tree_util.keystr(path)
    )
    hf_config = transformers.Gemma2Config(
        vocab_size=shape["vocab_size"],
        hidden_size=shape["d_model"],
        num_hidden_layers=shape["n_layers"],
        num_attention_heads=shape["n_heads"],
        num_key_value_heads=shape["n_kv_heads"],
        head_dim=shape["head_dim"],
        intermediate_size=shape["d_mlp"],
    )
    with torch.device("meta"):
        theirs = sum(p.numel() for p in transformers.Gemma2ForCausalLM(hf_config).parameters())
    assert ours == theirs
    assert config.attn_logit_softcap == 50.0 and config.final_logit_softcap == 30.0 and config.post_norms
    assert config.sliding_windows[:4] == (4096, 0, 4096, 0)
    assert config.attn_scales[0] == pytest.approx(256**-0.5)


def test_the_million_feature_plan_fits_24_gib():
    plan = million.plan_gemma2_layer(sizes.MILLION["gemma2-2b"], job_slice=131072)
    assert plan["features"] == 2**20 and plan["vocab"] == 256000
    assert plan["whole_dictionary_gb"] == pytest.approx(18.0)  # why the job reads it in slices
    assert plan["slices"] == 8 and plan["within_24_gib"] and plan["peak_gb"] < 24.0


def test_a_slice_is_measured_and_extrapolated(tmp_path):
    out = million.main(["--size", "gemma2-tiny", "--out", str(tmp_path / "m.json")])
    spec = sizes.MILLION["gemma2-tiny"]
    readouts = out["slice"]["readouts"]
    assert set(readouts) == {"query_lens_value", "query_lens_key"}
    assert all(r["rows"] == [spec["slice_features"], 25] and r["seconds"] > 0 for r in readouts.values())
    e = out["extrapolated"]
    assert e["slice_factor"] == spec["features"] / spec["slice_features"] == 4
    assert e["readouts_s"] == pytest.approx(4 * sum(r["seconds"] for r in readouts.values()))
    assert "ESTIMATED" in e["method"] and e["sweeps_s_estimated"] > 0


def test_other_options_are_refused_for_the_gemma2_sizes():
    with pytest.raises(SystemExit, match="planned and measured by a slice"):
        million.main(["--size", "gemma2-tiny", "--vocab", "4096"])
