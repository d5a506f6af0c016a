"""The 1B-sized throughput jobs and the paper's four settings fit this machine's 24 GiB: the
planned peak, by arithmetic on shapes (nothing is built or run)."""

import pytest

from benchmarks import builders, memory_plan, sizes

MACHINE_GB = 24.0


def test_planned_peak_of_the_llama_size_fits_24_gib():
    spec = sizes.THROUGHPUT["llama-1b"]
    assert spec["hf"]["num_key_value_heads"] < spec["hf"]["num_attention_heads"]  # grouped-query attention
    plan = memory_plan.planned_peak_gb("llama-1b")
    assert plan["inside_budget"]["within_budget"]
    assert plan["total_gb"] < MACHINE_GB
    # the parameters as counted from the shapes (about a billion, float32, tied embeddings)
    assert 0.9e9 * 4 * 2 < plan["hf_model_and_converted_gb"] * 2**30 < 1.4e9 * 4 * 2


# (setting, parameters in billions, from the published model cards)
PAPER = [("gpt2-small", 0.124), ("gemma3-270m", 0.268), ("gemma3-1b", 1.0), ("qwen3-1.7b", 1.7)]


@pytest.mark.parametrize("size, billions", PAPER)
def test_the_papers_settings_fit_24_gib_at_the_papers_sample(size, billions):
    plan = memory_plan.planned_peak_gb(size, *sizes.PAPER_SAMPLE)
    assert plan["inside_budget"]["within_budget"]
    assert plan["total_gb"] < MACHINE_GB
    # the shapes are the published models': their parameter counts (float32, held twice), within 10 %
    assert 0.9 * billions * 1e9 * 8 < plan["hf_model_and_converted_gb"] * 2**30 < 1.1 * billions * 1e9 * 8


def test_the_papers_settings_have_its_layers():
    for size, _ in PAPER:
        spec = sizes.THROUGHPUT[size]
        n_layers = builders.hf_config(spec["hf"]).num_hidden_layers
        job = spec["job_layers"] or range(n_layers)
        assert spec["paper"] and set(spec["layers"]) <= set(job) and max(job) < n_layers


def test_gemma_size_has_local_and_global_layers():
    config = builders.hf_config(sizes.THROUGHPUT["gemma3-1b"]["hf"])
    assert config.layer_types.count("full_attention") == 26 // 6
    assert set(config.layer_types) == {"full_attention", "sliding_attention"}
    assert config.sliding_window == 512
