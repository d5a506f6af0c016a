"""Sharded model weights (`shard_weights=True`) on meshes of 8 simulated CPU devices: the same
signatures as one device, with the vocabulary matrices and MLP units really split
(docs/definitions.md section 4)."""

import numpy as np
import pytest

from simulated_devices import run_worker

SHAPES = [("(2, 4)", 4), ("(4, 2)", 2)]


@pytest.fixture(scope="module")
def report():
    return run_worker("weights_worker.py")


@pytest.mark.parametrize("shape", [s for s, _ in SHAPES])
def test_sharded_weights_give_single_device_signatures(report, shape):
    single, sharded = report["(1, 1)"], report[shape]
    assert sharded["ids"] == single["ids"]  # top and bottom ids of every lens, in order
    assert sharded["layer_ids"] == single["layer_ids"]  # first-order per-term readouts
    for got, want in zip(sharded["scores"], single["scores"]):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [s for s, _ in SHAPES])
def test_merged_topk_keeps_tie_order_and_ignores_padding(report, shape):
    assert report[shape]["split_topk_matches"]


@pytest.mark.parametrize("shape, feature", SHAPES)
def test_weights_are_split_over_feature(report, shape, feature):
    entry, d, d_mlp = report[shape], report["d_model"], report["d_mlp"]
    rows = -(-report["vocab"] // feature)  # vocabulary padded to a multiple of the axis
    assert entry["embed_shards"] == [[rows, d]]
    assert entry["lm_head_shards"] == [[rows, d]]
    assert entry["key_matrix_shards"] == [[rows, d]]
    assert entry["up_proj_shards"] == [[2, d, d_mlp // feature]]
    assert entry["down_proj_shards"] == [[2, d_mlp // feature, d]]
    assert entry["attention_shards"] == [[2, d, d]]  # attention stays replicated


@pytest.mark.parametrize("shape", [s for s, _ in SHAPES])
def test_compiled_programs_never_hold_the_whole_vocabulary(report, shape):
    entry = report[shape]
    assert entry["sweep_full_vocab"] == [] and entry["readout_full_vocab"] == []
    assert entry["sweep_has_all_reduce"]  # position sums across `data`, embedding shards across `feature`
    assert entry["readout_has_all_gather"]  # per-shard top-k candidates merged
    assert entry["readout_spec"][1] == "data"  # feature rows over `data`, the vocabulary over `feature`
    # The check can fail: replicated weights put whole-vocabulary arrays in both programs.
    control = report["replicated_control"]
    assert control["sweep_full_vocab"] and control["readout_full_vocab"]


def test_automatic_decision(report):
    auto = report["auto"]
    assert auto["tiny_free"] and not auto["large_free"]
    assert not auto["no_feature_axis"]  # nothing to split over
    assert auto["placed_when_tight"] == [[-(-report["vocab"] // 4), report["d_model"]]]
