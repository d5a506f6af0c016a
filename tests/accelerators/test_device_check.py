"""`benchmarks/device_check.py` at toy sizes on CPU: every part recorded, float32 parity with
the committed fixture, GPU-only modes recorded as unavailable; the budget logic and the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks import device_check

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("device") / "device-cpu-tiny.json"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    subprocess.run(
        [sys.executable, "-m", "benchmarks.device_check", "--size", "tiny", "--budget-s", "60", "--out", str(out)],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return json.loads(out.read_text()) | {"path": str(out)}


def test_every_part_is_recorded(tiny_run):
    parts = tiny_run["parts"]
    assert list(parts) == list(device_check.PARTS)
    assert all(part["status"] in ("ok", "skipped", "stopped", "unavailable on cpu") for part in parts.values()), parts
    for name in ("versions", "matmul_peak", "parity"):
        assert parts[name]["status"] == "ok", parts[name]
    assert parts["versions"]["backend"] == "cpu" and parts["versions"]["jax_version"]
    assert parts["matmul_peak"]["float32"]["flops_per_s"] > 0


def test_float32_parity_with_the_cpu_fixture(tiny_run):
    parity = tiny_run["parts"]["parity"]["float32"]
    assert parity["passed"] is True
    assert set(parity["lenses"]) == {
        "logit_lens_value",
        "logit_lens_key",
        "first_order_value",
        "first_order_key",
        "query_lens_value",
        "query_lens_key",
    }
    for lens, result in parity["lenses"].items():
        assert result["ids_identical"], lens
        assert result["max_score_error"] <= 1e-4, lens


def test_gpu_only_modes_are_recorded_unavailable(tiny_run):
    parts = tiny_run["parts"]
    assert parts["matmul_peak"]["tf32"] == "unavailable on cpu"
    assert parts["parity"]["tf32"] == "unavailable on cpu"
    assert parts["gpt2_small_32768_tf32"]["status"] == "unavailable on cpu"
    assert parts["parity"]["bfloat16"] == "unavailable on cpu"


def test_the_table_has_a_row_per_file(tiny_run):
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.device_check", "--table", tiny_run["path"], tiny_run["path"]],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": str(ROOT)},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rows = [line for line in out.splitlines() if line.startswith("| cpu | tiny |")]
    assert len(rows) == 2 and "passed" in rows[0]


def test_the_fixture_is_small_and_complete():
    files = [p for p in device_check.FIXTURE.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 2 * 2**20
    expected = np.load(device_check.FIXTURE / "expected.npz")
    assert len(expected.files) == 12 and expected["query_lens_value/top_ids"].shape[1] == device_check.K


def test_ties_may_swap_and_nothing_else():
    reference = np.array([[5, 6, 7]])
    scores = np.array([[3.0, 2.0, 2.0 - 1e-6]])
    assert device_check.same_up_to_ties(np.array([[5, 7, 6]]), reference, scores, 1e-5)
    assert not device_check.same_up_to_ties(np.array([[6, 5, 7]]), reference, scores, 1e-5)
    assert device_check.same_up_to_ties(np.array([[5, 6, 9]]), reference, scores, 1e-5)  # ties the last entry
    assert not device_check.same_up_to_ties(np.array([[5, 9, 7]]), reference, scores, 1e-7)


def test_parts_that_do_not_fit_are_skipped_and_overruns_stopped(tmp_path, monkeypatch):
    def job(seconds):
        def run(cfg, parts):
            time.sleep(seconds)
            return {
                "total_s": seconds,
                "sweep_s": seconds,
                "readout_s": 0.0,
                "compile_s": 0.0,
                "sweep": {"flops": 1.0},
                "readout": {"flops": 1.0},
            }

        return run

    exited = threading.Event()

    def overrunning(cfg, parts):
        exited.wait(30)  # the real run's process ends here; this one waits for the watchdog's exit call
        return {}

    fake = dict.fromkeys(device_check.PARTS, job(0.0))
    fake["gpt2_small_2048_float32"] = job(2.0)  # the "32,768"-token estimate (tiny: 64 tokens): 2 x 2 s
    fake["gemma3_1b_single_layer"] = overrunning
    monkeypatch.setattr(device_check, "PART_FUNCTIONS", fake)
    monkeypatch.setattr(device_check, "MIN_PART_S", 0.1)
    monkeypatch.setattr(device_check, "_gemma_flops", lambda cfg: 0.1)  # estimated 0.1 s: it starts, then overruns
    path = device_check.run("tiny", 3.5, tmp_path / "r.json", log=lambda line: None, exit=lambda code: exited.set())
    assert exited.is_set()
    parts = json.loads(path.read_text())["parts"]
    assert list(parts) == list(device_check.PARTS)
    assert parts["gpt2_small_2048_float32"]["status"] == "ok"
    assert (
        parts["gpt2_small_32768_float32"]["status"] == "skipped"
        and "needs about 4 s" in parts["gpt2_small_32768_float32"]["reason"]
    )
    assert parts["gpt2_small_32768_tf32"]["status"] == "unavailable on cpu"
    assert parts["gemma3_1b_single_layer"]["status"] == "stopped"
    assert parts["gemma3_1b_single_layer"]["wall_s"] < 10


@pytest.fixture(scope="module")
def paper_parts() -> dict:
    """The Qwen3 setting's two parts at test size, float32 first (in this process)."""
    parts = {}
    for name in ("paper_qwen3_1_7b_float32", "paper_qwen3_1_7b_bfloat16"):
        parts[name] = {"status": "ok", **device_check.PART_FUNCTIONS[name](device_check.SIZES["tiny"], parts)}
    return parts


def test_the_papers_settings_are_parts_in_both_dtypes():
    assert len(device_check.PAPER_PARTS) == 8 and set(device_check.PAPER_PARTS) <= set(device_check.PARTS)
    full = device_check.SIZES["full"]
    assert full["paper_sample"] == (1024, 32)
    assert [full["paper"][s]["features"] for s in device_check.PAPER_SETTINGS] == [32768, 65536, 65536, 32768]


def test_a_paper_part_runs_its_job_layers_and_reports_the_bfloat16_overlap(paper_parts):
    low, high = paper_parts["paper_qwen3_1_7b_float32"], paper_parts["paper_qwen3_1_7b_bfloat16"]
    assert low["layers"] == high["layers"] == [1, 2] and low["tokens"] == 32 and low["dtype"] == "float32"
    assert "top25_overlap_with_float32" not in low
    overlap = high["top25_overlap_with_float32"]
    # 64 features x 2 sides x 2 layers; bfloat16 keeps most of each float32 list
    assert overlap["lists"] == 256 and 0.8 <= overlap["min"] <= overlap["mean"] <= 1.0
    assert low["sweep"]["flops"] > 0 and low["readout"]["flops"] > 0
    # the bfloat16 part's estimate is the float32 part's measured time
    assert (
        device_check.estimate_s("paper_qwen3_1_7b_bfloat16", device_check.SIZES["tiny"], paper_parts) == low["total_s"]
    )


def test_the_million_part_runs_every_feature_slice_by_slice():
    part = device_check.PART_FUNCTIONS["million_gemma2_2b"](device_check.SIZES["tiny"], {})
    assert part["features"] == 4096 and part["job_slice_features"] == 1024
    assert part["sweep_s"] > 0 and part["readout_s"] > 0 and part["rate"]["flops"] > 0
