"""A run SIGKILLed mid-way and restarted with the same command ends with exactly the bytes of
an uninterrupted run; a killed process leaves no partial file under a final name."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from qlens_jax.cli import main
from world import base_args

ROOT = Path(__file__).resolve().parents[2]
# Three shards per dictionary and lens (16 + 16 + 8 padded to 16): 18 shards in all. The
# self-check runs here (the first shard of each lens and dictionary).
EXTRA = ("--lenses", "query_lens_value,logit_lens_key", "--shard-size", "16")


def _finals(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.parquet") if not p.name.startswith("."))


def _temporaries(directory: Path) -> list[Path]:
    return sorted(directory.glob(".tmp-*"))


def test_killed_run_resumes_to_identical_bytes(world, tmp_path):
    uninterrupted = tmp_path / "uninterrupted"
    assert main(base_args(world, uninterrupted, *EXTRA)) == 0
    expected = (uninterrupted / "signatures.parquet").read_bytes()

    out = tmp_path / "killed"
    args = base_args(world, out, *EXTRA)
    env = {
        **os.environ,
        "QLENS_TEST_SLOW_SHARDS": "0.5",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "qlens_jax.cli", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    shards = out / "shards"
    deadline = time.monotonic() + 300
    try:
        # Kill while the second shard sits under its temporary name (the writer pauses there).
        while not (shards.exists() and _finals(shards) and _temporaries(shards)):
            assert process.poll() is None, f"the run ended before it could be killed: {process.communicate()}"
            assert time.monotonic() < deadline, "no shard appeared within 300 s"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate()
    done = _finals(shards)
    assert 1 <= len(done) < 18
    assert _temporaries(shards), "the kill should leave a temporary file behind"
    assert not (out / "signatures.parquet").exists()
    assert (out / "operators" / "operators.json").is_file()  # the restart loads them instead of sweeping again
    assert json.loads((out / "run.json").read_text())["status"] == "running"

    assert main(args) == 0  # the same command again
    assert (out / "signatures.parquet").read_bytes() == expected
    assert not list(out.rglob(".tmp-*"))
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "complete" and len(run["sessions"]) == 2
    assert run["sessions"][1]["resumed"] and run["sessions"][1]["shards_done_at_start"] == len(done)
    for shard in done:  # finished shards are kept as they were
        assert shard.read_bytes() == (uninterrupted / "shards" / shard.name).read_bytes()
