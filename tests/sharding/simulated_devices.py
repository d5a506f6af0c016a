"""Run a worker script of this folder in a subprocess with 8 simulated CPU devices."""

import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_worker(name: str) -> dict:
    """The JSON report that worker script `name` prints, run with 8 simulated CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), str(HERE.parent), str(HERE.parent / "lens")])
    done = subprocess.run([sys.executable, str(HERE / name)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)
