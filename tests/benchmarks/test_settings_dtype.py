"""A paper-like setting at test size (`--size qwen3-tiny`: a family of its own, its own job
layers) run in bfloat16 on both sides against the reference: float32 lists are checked first,
then the bfloat16 lists' overlap with them is reported for each side."""

import pytest

from contestant_runs import run


@pytest.fixture(scope="module")
def bfloat16_run(tmp_path_factory):
    return run(
        ["--size", "qwen3-tiny", "--layers", "1", "2", "--dtype", "bfloat16", "--no-roofline"],
        tmp_path_factory.mktemp("bfloat16"),
    )


def test_the_agreement_check_uses_float32_lists(bfloat16_run):
    code, text, data = bfloat16_run
    assert code == 0
    agreement = data["agreement"]
    # 2 lenses x 2 layers x 1 feature x (top, bottom), against the per-feature path's float32 lists
    assert agreement["passed"] and agreement["features_checked"] == 8
    assert data["config"]["dtype"] == "bfloat16" and data["config"]["job_layers"] == [1, 2]
    assert "at each of layers [1, 2]" in data["summary"]["whole_dictionary"]["job"]


def test_bfloat16_ran_and_its_overlap_is_reported_for_both_sides(bfloat16_run):
    code, text, data = bfloat16_run
    reference = data["raw"]["reference"]
    low, high = reference["results"], reference["float32_results"]
    # the bfloat16 pass really ran in bfloat16: its scores are not the float32 ones
    assert any(a["top_scores"] != b["top_scores"] for key in low for a, b in zip(low[key], high[key]))
    assert set(data["raw"]["per_feature"]["float32_results"]) == set(data["raw"]["per_feature"]["results"])
    overlap = data["bfloat16_overlap"]
    for side in ("qlens", "contestant"):
        assert overlap[side]["lists"] == 4 and 0.5 <= overlap[side]["min"] <= overlap[side]["mean"] <= 1.0
    assert "bfloat16 against float32, top-25 overlap" in text
