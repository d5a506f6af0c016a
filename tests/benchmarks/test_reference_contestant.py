"""`benchmarks.throughput` without `--authors-repo`: `reference_torch.py` stands in, and the
roofline is accounted."""

import pytest

from contestant_runs import run


def test_without_authors_repo_reference_torch_stands_in_and_the_roofline_is_accounted(tmp_path, capsys):
    code, text, data = run([], tmp_path, capsys)
    assert code == 0
    assert data["contestant"]["name"] == "reference_torch"
    assert "contestant: benchmarks/reference_torch.py (a re-implementation, not the authors' code)" in text
    roofline = data["roofline"]
    sweeps = roofline["sweeps"]
    assert sweeps["flops"] > 0 and 0 < sweeps["fraction_of_peak"] < 1.5
    assert sum(sweeps["split"].values()) == pytest.approx(sweeps["flops"], rel=1e-12)
    assert sweeps["split"]["attention"] > 0 and sweeps["split"]["mlp"] > 0
    assert sweeps["split"]["other"] < 0.05 * sweeps["flops"]
    assert len(roofline["readouts"]) == 4
    assert all(r["flops"] > 0 and r["fraction_of_peak"] > 0 for r in roofline["readouts"].values())
    assert "roofline" in text and "of peak" in text
