"""Signatures on meshes of 8 simulated CPU devices equal single-device ones, and the compiled
computations really are partitioned (docs/definitions.md section 4)."""

import numpy as np
import pytest

from simulated_devices import run_worker


@pytest.fixture(scope="module")
def report():
    return run_worker("mesh_worker.py")


@pytest.mark.parametrize("shape", ["(4, 2)", "(2, 4)"])
def test_mesh_results_equal_single_device(report, shape):
    single, sharded = report["(1, 1)"], report[shape]
    assert sharded["ids"] == single["ids"]
    np.testing.assert_allclose(np.asarray(sharded["scores"]), np.asarray(single["scores"]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape, feature", [("(4, 2)", 2), ("(2, 4)", 4)])
def test_sweeps_are_partitioned(report, shape, feature):
    entry = report[shape]
    d_model = 48
    assert entry["operator_spec"][:2] == [None, "feature"]  # rows of each operator split over `feature`
    assert entry["operator_devices"] == 8
    assert [shape_[1] for shape_ in entry["operator_shard_shapes"]] == [d_model // feature]
    assert entry["sweep_has_all_reduce"]  # contributions summed across the data axis


def test_readout_is_partitioned_over_features(report):
    entry = report["(2, 4)"]
    assert entry["readout_spec"][1] == ["data", "feature"]  # feature rows over every device
    chunks, rows, k = entry["readout_shape"]
    assert entry["readout_shard_shapes"] == [[chunks, rows // 8, k]]


def test_readout_ranks_only_its_own_rows(report):
    """Each device scores and ranks only its rows: no all-gather of a chunk's scores before the
    top-k (XLA's partitioner inserts one around a TopK unless the ranking runs per device)."""
    for shape in ("(4, 2)", "(2, 4)"):
        entry = report[shape]
        chunks, rows, k = entry["readout_shape"]
        assert not entry["readout_has_all_gather"]
        assert entry["readout_topk_rows"] == [rows // 8]
    assert report["(1, 1)"]["readout_topk_rows"] == [report["(1, 1)"]["readout_shape"][1]]
