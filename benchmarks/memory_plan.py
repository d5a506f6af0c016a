"""The dense path's planned peak memory for a throughput size, by arithmetic on shapes: what
`tests/benchmarks/test_memory_plan.py` checks against 24 GiB without building any weights.

    python -m benchmarks.memory_plan --size gemma3-1b
"""

from __future__ import annotations

import numpy as np

from benchmarks import builders, sizes


def planned_peak_gb(size: str, batch: int | None = None, seq: int | None = None) -> dict:
    """The dense contestant's planned peak memory for `--size` (GiB), by arithmetic on shapes
    (`eqx.filter_eval_shape`: no weights are made, nothing runs). Its process holds, at most:
    the Hugging Face model and its conversion at once (2 x parameters), the kernel's memory
    budget (the planner sizes the sweeps' residuals and tangents and the readouts' chunks
    within it: `plan_chunks`, `blockwise.sequences_that_fit`, `feature_chunk_for`), the
    operators of both sides, the dictionary and the token sample."""
    import equinox as eqx
    import jax

    import converters
    from qlens_jax.lens import blockwise
    from qlens_jax.lens.chunks import bytes_per_token, plan_chunks
    from qlens_jax.lens.points import n_key_points, n_points
    from qlens_jax.models import init_transformer
    from qlens_jax.readout import feature_chunk_for

    spec = dict(sizes.THROUGHPUT[size])
    spec["batch"], spec["seq"] = batch or spec["batch"], seq or spec["seq"]
    config = converters.model_config_from_hf(builders.hf_config(spec["hf"]).to_dict())
    skeleton = eqx.filter_eval_shape(init_transformer, config, jax.random.key(0))
    params = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(skeleton))
    plan = plan_chunks(skeleton, (spec["batch"], spec["seq"]), spec["budget"])
    d, gib = config.d_model, 2**30
    budget = spec["budget"] * gib
    # What the planner puts inside the budget: the sweep's linearization residuals (a basis-
    # major sweep: half the budget; a block-major one only where `sequences_that_fit` says
    # so) and a readout chunk's scores and top-k work (a quarter).
    residuals = plan.sequences_per_chunk * spec["seq"] * bytes_per_token(skeleton, spec["seq"])
    blockwise_sequences = blockwise.sequences_that_fit(skeleton, spec["seq"], d, spec["budget"])
    readout_chunk = feature_chunk_for(config.vocab_size, 0.25 * budget)
    inside = {
        "sweep_residuals_gb": residuals / gib,
        "blockwise_sequences_that_fit": blockwise_sequences,
        "readout_chunk_features": readout_chunk,
        "readout_chunk_gb": readout_chunk * config.vocab_size * 4 * 3 / gib,
    }
    inside["within_budget"] = bool(residuals <= 0.5 * budget and inside["readout_chunk_gb"] * gib <= 0.25 * budget)
    parts = {
        "hf_model_and_converted_gb": 2 * params / gib,
        "kernel_budget_gb": spec["budget"],
        "operators_gb": (n_points(config.n_layers) + n_key_points(config.n_layers)) * d * d * 4 / gib,
        "dictionary_gb": 2 * spec["features"] * d * 4 / gib,
        "tokens_gb": spec["batch"] * spec["seq"] * 5 / gib,
    }
    return parts | {
        "total_gb": sum(parts.values()),
        "inside_budget": inside,
        "plan": {"sequences_per_chunk": plan.sequences_per_chunk, "tangent_chunk": plan.tangent_chunk},
    }


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="The dense path's planned peak memory (GiB) of a throughput size.")
    parser.add_argument("--size", choices=sorted(sizes.THROUGHPUT), default="gemma3-1b")
    parser.add_argument("--paper-sample", action="store_true", help="the paper's token sample instead of the size's")
    args = parser.parse_args()
    print(
        json.dumps(planned_peak_gb(args.size, *(sizes.PAPER_SAMPLE if args.paper_sample else (None, None))), indent=1)
    )
