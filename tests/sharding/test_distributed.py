"""Two local processes joined by `jax.distributed` (CPU, localhost) compute the same signatures
as one process, and only process 0 writes."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), str(HERE.parent), str(HERE.parent / "lens")])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def test_two_processes_equal_one(tmp_path):
    worker = str(HERE / "distributed_worker.py")
    single = tmp_path / "single.npz"
    done = subprocess.run(
        [sys.executable, worker, str(_free_port()), "1", "0", str(single)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    port = _free_port()
    outputs = [tmp_path / f"multi{i}.npz" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, worker, str(port), "2", str(i), str(outputs[i])],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    assert outputs[0].exists() and not outputs[1].exists()
    want, got = np.load(single), np.load(outputs[0])
    assert sorted(want.files) == sorted(got.files)
    for name in want.files:
        if "scores" in name:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(got[name], want[name])
