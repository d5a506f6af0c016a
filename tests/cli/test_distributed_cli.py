"""`qlens signatures --distributed`: two local processes joined by jax.distributed (CPU,
localhost) write the same signatures.parquet as one process, only process 0 touches --out,
a run resumes with another number of processes, and bad input on one process stops both."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from qlens_jax.cli import main
from world import base_args, shared_module_run, shared_module_world

ROOT = Path(__file__).resolve().parents[2]
# Dense path, both Query Lens sides, three shards per dictionary and lens; self-check on
# (the per-feature transport runs over the two-process mesh too).
EXTRA = ("--lenses", "query_lens_value,query_lens_key", "--path", "dense", "--shard-size", "16")
TIMEOUT = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args_of_process: list[list[str]]) -> list[subprocess.CompletedProcess]:
    """Run one `qlens` process per argument list, joined as one distributed job."""
    port = _free_port()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    n = len(args_of_process)
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "qlens_jax.cli",
                *args,
                "--distributed",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num-processes",
                str(n),
                "--process-id",
                str(i),
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, args in enumerate(args_of_process)
    ]
    done = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=TIMEOUT)
            done.append(subprocess.CompletedProcess(process.args, process.returncode, out, err))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    return done


def _assert_same_signatures(got: Path, want: Path) -> None:
    got, want = pq.read_table(got).to_pydict(), pq.read_table(want).to_pydict()
    assert sorted(got) == sorted(want)
    for column in want:
        if "score" in column or column in ("relative_variance", "layer_energy"):
            # row by row: first-order rows hold as many terms as their dictionary has blocks after it
            for g, w in zip(got[column], want[column], strict=True):
                np.testing.assert_allclose(
                    np.asarray(g, float), np.asarray(w, float), rtol=1e-5, atol=1e-6, err_msg=column
                )
        else:
            assert got[column] == want[column], column


@pytest.fixture(scope="module")
def single(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "run"
    assert main(base_args(world, out, *EXTRA)) == 0
    return out


def test_two_processes_write_what_one_writes(world, single, tmp_path):
    out, elsewhere = tmp_path / "run", tmp_path / "process-1-out"
    results = _launch([base_args(world, out, *EXTRA), base_args(world, elsewhere, *EXTRA)])
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_signatures(out / "signatures.parquet", single / "signatures.parquet")
    assert not elsewhere.exists(), "only process 0 may touch the output folder"
    assert "qlens: 240 signatures" in results[0].stdout and "on 2 processes" in results[0].stdout
    assert "qlens:" not in results[1].stdout  # the summary line comes from process 0 only
    run = json.loads((out / "run.json").read_text())
    session = run["sessions"][-1]
    assert run["status"] == "complete" and session["processes"] == 2 and session["devices"] == 2
    assert session["mesh"] == {"data": 2, "feature": 1}
    assert (out / "operators" / "operators.json").is_file()
    assert sorted(p.name for p in (out / "shards").iterdir()) == sorted(p.name for p in (single / "shards").iterdir())


def test_one_process_run_resumes_on_two(world, single, tmp_path):
    """A run stopped with some shards done (and its operators saved) continues on two
    processes: process 0 loads the operators and tells process 1 which shards are left."""
    out = tmp_path / "run"
    shutil.copytree(single, out)
    (out / "signatures.parquet").unlink()
    shards = sorted((out / "shards").iterdir())
    for shard in shards[::2]:
        shard.unlink()
    run = json.loads((out / "run.json").read_text())
    run["status"] = "running"
    (out / "run.json").write_text(json.dumps(run))

    results = _launch([base_args(world, out, *EXTRA)] * 2)
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_signatures(out / "signatures.parquet", single / "signatures.parquet")
    session = json.loads((out / "run.json").read_text())["sessions"][-1]
    assert session["resumed"] and session["processes"] == 2
    assert session["shards_done_at_start"] == len(shards) - len(shards[::2])
    for shard in shards[1::2]:  # shards done before are kept as they were
        assert shard.read_bytes() == (single / "shards" / shard.name).read_bytes()


def test_module_output_run_resumes_on_two(tmp_path_factory, tmp_path):
    """The shared module-output run (attn_out, z, mlp_out and a residual SAE), stopped with its
    operators saved, continues on two processes: process 1 receives the operators at the module
    outputs (`sites` and their arrays) from process 0 and computes the same rows."""
    module_world = shared_module_world(tmp_path_factory)
    finished, args, _ = shared_module_run(tmp_path_factory, module_world)
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "signatures.parquet").unlink()
    removed = [p for p in (out / "shards").iterdir() if p.name.startswith(("query_lens", "first_order"))]
    for shard in removed:
        shard.unlink()
    run = json.loads((out / "run.json").read_text())
    run["status"] = "running"
    (out / "run.json").write_text(json.dumps(run))
    resumed = [str(out) if a == str(finished) else a for a in args]
    results = _launch([resumed] * 2)
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    assert len(removed) == 16 and f"resumed with {23 - 16}/23 shards done" in results[0].stdout
    _assert_same_signatures(out / "signatures.parquet", finished / "signatures.parquet")


def test_bad_input_on_one_process_stops_both(world, tmp_path):
    out = tmp_path / "run"
    good = base_args(world, out, *EXTRA)
    bad = [str(tmp_path / "missing-sae") if a == str(world.dictionaries[0]) else a for a in good]
    results = _launch([good, bad])
    assert [r.returncode for r in results] == [2, 2], [r.stderr[-2000:] for r in results]
    assert "missing-sae" in results[1].stderr and "Traceback" not in results[1].stderr
    assert "process 1 stopped on bad input" in results[0].stderr and "Traceback" not in results[0].stderr
    assert not (out / "run.json").exists()


def test_two_processes_with_weights_split_over_both(world, single, tmp_path):
    """`--mesh 1,2 --weights sharded`: each process holds half the vocabulary rows and MLP units;
    the sweeps run as one GSPMD program across the two processes; same signatures."""
    out = tmp_path / "run"
    args = base_args(world, out, *EXTRA, "--mesh", "1,2", "--weights", "sharded")
    results = _launch([args, args])
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_signatures(out / "signatures.parquet", single / "signatures.parquet")
    assert json.loads((out / "run.json").read_text())["sessions"][-1]["mesh"] == {"data": 1, "feature": 2}


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--mesh", "2,1"), "--mesh 2,1: needs 2 devices; this job has 1"),
        (("--mesh", "two"), "--mesh 'two': expected DATA,FEATURE"),
        (("--weights", "sharded"), "--weights sharded: give a --mesh with a feature axis"),
        (("--coordinator", "127.0.0.1:1234"), "--coordinator 127.0.0.1:1234: only used with --distributed"),
        (("--distributed", "--num-processes", "2", "--process-id", "2"), "--process-id 2: must be in 0..1"),
    ],
)
def test_bad_scale_out_options(world, tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(base_args(world, out, *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (out / "run.json").exists()
