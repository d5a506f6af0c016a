"""Planners size their work from the memory of the device they run on (`qlens_jax.memory`),
fed here with fake device statistics: an accelerator's own free memory, never the host's."""

from __future__ import annotations

from dataclasses import dataclass

import equinox as eqx
import jax
import pytest
import transformers

import converters
import qlens_jax
from converters import model_config_from_hf
from kernel_fixtures import dictionary_set
from qlens_jax import memory
from qlens_jax.lens import blockwise, operators
from qlens_jax.lens.chunks import plan_chunks
from qlens_jax.models import init_transformer
from qlens_jax.readout import feature_chunk_for
from tiny_models import build_hf_model, padded_batch

GiB = 2**30


@dataclass
class FakeDevice:
    """What planners read of a device: its platform and `memory_stats()`."""

    platform: str
    bytes_limit: int = 0
    bytes_in_use: int = 0

    def memory_stats(self):
        return {"bytes_limit": self.bytes_limit, "bytes_in_use": self.bytes_in_use} if self.platform != "cpu" else None


class Planned(Exception):
    """Raised by a spy once it has seen what a planner chose (nothing is computed)."""


@pytest.fixture(autouse=True)
def host_with_little_memory(monkeypatch):
    """The host claims 1 GiB: an accelerator plan that read the host would be tiny."""
    monkeypatch.delenv("QLENS_MEMORY_BUDGET_GB", raising=False)
    monkeypatch.setattr(memory, "host_available_gb", lambda: 1.0)


@pytest.fixture(scope="module")
def gpt2_small():
    """GPT-2-small shapes without weights (planners read only shapes and dtypes)."""
    config = model_config_from_hf(transformers.GPT2Config().to_dict())
    return eqx.filter_eval_shape(init_transformer, config, jax.random.key(0))


@pytest.fixture(scope="module")
def tiny():
    model = converters.load_model(build_hf_model("gpt2", seed=0))
    tokens, mask = padded_batch(model.config.vocab_size, batch=4, seq=11, seed=0)
    return model, dictionary_set(model.config.d_model, model.config.n_layers), tokens, mask


def test_free_memory_is_the_accelerators_own():
    gpu = FakeDevice("gpu", 16 * GiB, 4 * GiB)
    assert memory.available_memory_gb(gpu) == 12.0
    assert memory.default_budget_gb(gpu) == pytest.approx(memory.ACCELERATOR_SHARE * 12.0)
    assert memory.available_memory_gb(FakeDevice("cpu")) == 1.0
    assert memory.default_budget_gb(FakeDevice("cpu")) == pytest.approx(memory.CPU_SHARE * 1.0)
    # A backend without statistics falls back to the host.
    assert memory.available_memory_gb(FakeDevice("tpu")) == 1.0


def test_the_environment_overrides_every_device(monkeypatch):
    monkeypatch.setenv("QLENS_MEMORY_BUDGET_GB", "3.5")
    assert memory.default_budget_gb(FakeDevice("gpu", 80 * GiB)) == 3.5
    assert memory.default_budget_gb(FakeDevice("cpu")) == 3.5


def test_chunk_plans_follow_the_devices_memory(gpt2_small):
    shape = (64, 256)
    small, large = FakeDevice("gpu", 8 * GiB), FakeDevice("gpu", 80 * GiB)
    plan_small, plan_large = plan_chunks(gpt2_small, shape, device=small), plan_chunks(gpt2_small, shape, device=large)
    # Token chunks: 10x the memory, ~10x the sequences (the host's 1 GiB would allow 1).
    assert plan_small.sequences_per_chunk >= 4
    assert 9 * plan_small.sequences_per_chunk <= plan_large.sequences_per_chunk <= 11 * plan_small.sequences_per_chunk
    # Tangents: vmapped chunks sized to the device on accelerators, one at a time on CPU.
    assert plan_small.tangent_chunk > 1 and plan_large.tangent_chunk > 1
    assert plan_chunks(gpt2_small, shape, device=FakeDevice("cpu")).tangent_chunk == 1
    fixed = (
        plan_chunks(gpt2_small, shape, sequences_per_chunk=2, device=small),
        plan_chunks(gpt2_small, shape, sequences_per_chunk=2, device=large),
    )
    assert 9 * fixed[0].tangent_chunk <= fixed[1].tangent_chunk or fixed[1].tangent_chunk == gpt2_small.config.d_model


def test_the_default_device_is_what_planners_read(gpt2_small, monkeypatch):
    monkeypatch.setattr(memory, "default_device", lambda: FakeDevice("gpu", 40 * GiB))
    assert plan_chunks(gpt2_small, (64, 256)) == plan_chunks(gpt2_small, (64, 256), device=FakeDevice("gpu", 40 * GiB))


@pytest.mark.parametrize("free_gb, block_major", [(1e-3, False), (8.0, True)])
def test_the_sweep_order_and_sizes_follow_the_devices_memory(tiny, monkeypatch, free_gb, block_major):
    model, _, tokens, mask = tiny
    device = FakeDevice("gpu", int(free_gb * GiB))
    monkeypatch.setattr(memory, "planning_device", lambda mesh=None: device)
    seen = {}

    def spy(name, mesh, tangent_chunk, with_input_norms=False, weights_sharded=False, blocks=None, sites=()):
        seen.update(name=name, tangent_chunk=tangent_chunk, blocks=blocks)
        raise Planned

    monkeypatch.setattr(operators, "sharded_sweep", spy)
    with pytest.raises(Planned):
        qlens_jax.transport_operators(model, tokens, mask, sweeps=("value", "key"))
    budget = memory.default_budget_gb(device)
    fits = blockwise.sequences_that_fit(
        model, tokens.shape[1], model.config.d_model, budget, kept_blocks=model.config.n_layers
    )
    assert (seen["blocks"] is not None) == block_major == (fits >= 1)
    assert seen["name"] == ("value+key" if block_major else "value")
    expected = plan_chunks(model, tokens.shape, device=device).tangent_chunk
    assert seen["tangent_chunk"] == expected > 1  # vmapped chunks: the fake device is a GPU


@pytest.mark.parametrize("free_gb", [0.005, 0.02])  # small enough for the tiny vocabulary to stay under the 4096 cap
def test_readout_chunks_follow_the_devices_memory(tiny, monkeypatch, free_gb):
    model, dictionaries, tokens, mask = tiny
    device = FakeDevice("gpu", int(free_gb * GiB))
    monkeypatch.setattr(memory, "default_device", lambda: device)
    seen = {}

    def spy(**kwargs):
        seen.update(kwargs)
        raise Planned

    monkeypatch.setattr("qlens_jax.lens.api.ReadoutContext", spy)
    with pytest.raises(Planned):
        qlens_jax.query_lens(model, dictionaries, tokens, mask, lenses=("logit_lens_value",))
    budget = memory.ACCELERATOR_SHARE * free_gb * GiB
    assert seen["feature_chunk"] == feature_chunk_for(model.config.vocab_size, 0.25 * budget)
    assert seen["feature_chunk"] != feature_chunk_for(model.config.vocab_size, 0.25 * memory.CPU_SHARE * GiB)
