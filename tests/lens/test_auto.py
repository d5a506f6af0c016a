"""The "auto" rules: dense path at d_model features or with operators given; block-major sweeps
when a sequence fits and explicit MLP Jacobians pay."""

import dataclasses

import pytest

import converters
from qlens_jax.lens import LensRequestError, auto, blockwise
from tiny_models import build_hf_model


def test_path_rule():
    assert auto.path("auto", 767, 768) == "per-feature"
    assert auto.path("auto", 768, 768) == "dense"
    assert auto.path("auto", 1, 768, have_operators=True) == "dense"
    assert auto.path("per-feature", 10_000, 768, have_operators=True) == "per-feature"
    with pytest.raises(LensRequestError, match="path 'fast'"):
        auto.path("fast", 1, 768)


def test_sweep_order_rule():
    # GPT-2 small's MLP widths (the fields the rule reads) on a tiny model's config.
    config = dataclasses.replace(converters.load_model(build_hf_model("gpt2")).config, d_model=768, d_mlp=3072)
    assert blockwise.worth_it(config, 768) and not blockwise.worth_it(config, 8)
    assert auto.sweep_order("auto", config, 768, sequences_fitting=1) == "blockwise"
    assert auto.sweep_order("auto", config, 768, sequences_fitting=0) == "basis"
    assert auto.sweep_order("auto", config, 8, sequences_fitting=4) == "basis"
    assert auto.sweep_order("basis", config, 768, sequences_fitting=4) == "basis"
    with pytest.raises(LensRequestError, match="unknown sweep_order 'fast'"):
        auto.sweep_order("fast", config, 768, 1)
