"""The XLA CPU flag (`qlens_jax._xla_flags`) is set only where the CPU is JAX's backend."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from qlens_jax import _xla_flags

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "platforms, cpu", [("cpu", True), ("cuda", False), ("cuda,cpu", False), ("tpu", False), (" CPU ", True)]
)
def test_jax_platforms_decides(monkeypatch, platforms, cpu):
    monkeypatch.setenv("JAX_PLATFORMS", platforms)
    assert _xla_flags.cpu_is_the_backend() is cpu


def test_an_installed_accelerator_plugin_means_no_cpu_flag(monkeypatch):
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.delenv("JAX_PLATFORM_NAME", raising=False)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "jax_cuda13_plugin" else real(name, *a)
    )
    assert _xla_flags.cpu_is_the_backend() is False


def test_the_flag_is_left_out_when_a_gpu_is_the_backend():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"} | {"JAX_PLATFORMS": "cuda", "PYTHONPATH": str(ROOT)}
    code = "import os, qlens_jax._xla_flags; print(os.environ.get('XLA_FLAGS', ''))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert _xla_flags.FLAG not in out
    env["JAX_PLATFORMS"] = "cpu"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert _xla_flags.FLAG in out
