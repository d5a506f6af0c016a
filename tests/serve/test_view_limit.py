"""`qlens view` stays for small runs: above `MAX_SIGNATURES` it refuses, pointing to `qlens serve`."""

import pytest

import qlens_jax.viewer as viewer
from qlens_jax.cli import main
from qlens_jax.errors import InputError


def test_view_refuses_runs_above_the_limit_and_points_to_serve(serve_run, tmp_path, monkeypatch, capsys):
    run_dir = serve_run[0]
    assert viewer.count_signatures(run_dir) == 360 and viewer.count_signatures(run_dir, [1]) == 120
    monkeypatch.setattr(viewer, "MAX_SIGNATURES", 359)
    out = tmp_path / "v.html"
    with pytest.raises(InputError, match=rf"360 signatures .*\(limit 359\).*qlens serve {run_dir}"):
        viewer.write_viewer(run_dir, out)
    assert main(["view", str(run_dir), "--out", str(out)]) == 2
    assert "qlens serve" in capsys.readouterr().err and not out.exists()
    path, n = viewer.write_viewer(run_dir, out, layers=[1])  # fewer layers fit
    assert n == 40 and path.is_file()
    monkeypatch.setattr(viewer, "MAX_SIGNATURES", 360)
    assert viewer.write_viewer(run_dir, out)[1] == 120
