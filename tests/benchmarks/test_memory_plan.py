"""The 1B-sized throughput jobs fit this machine's 24 GiB: the planned peak, by arithmetic on
shapes (nothing is built or run)."""

import pytest

from benchmarks import builders, memory_plan, sizes

MACHINE_GB = 24.0


@pytest.mark.parametrize("size, d_model, vocab", [("llama-1b", 2048, 128256), ("gemma3-1b", 1152, 262144)])
def test_planned_peak_of_the_1b_sizes_fits_24_gib(size, d_model, vocab):
    spec = sizes.THROUGHPUT[size]
    assert spec["hf"]["hidden_size"] == d_model and spec["hf"]["vocab_size"] == vocab
    assert spec["features"] == 16384 and spec["batch"] * spec["seq"] == 256 and len(spec["layers"]) == 1
    assert spec["hf"]["num_key_value_heads"] < spec["hf"]["num_attention_heads"]  # grouped-query attention
    plan = memory_plan.planned_peak_gb(size)
    assert plan["inside_budget"]["within_budget"]
    assert plan["total_gb"] < MACHINE_GB
    # the parameters as counted from the shapes (about a billion, float32, tied embeddings)
    assert 0.9e9 * 4 * 2 < plan["hf_model_and_converted_gb"] * 2**30 < 1.4e9 * 4 * 2


def test_gemma_size_has_local_and_global_layers():

    config = builders.hf_config(sizes.THROUGHPUT["gemma3-1b"]["hf"])
    assert config.layer_types.count("full_attention") == 26 // 6
    assert set(config.layer_types) == {"full_attention", "sliding_attention"}
    assert config.sliding_window == 512
