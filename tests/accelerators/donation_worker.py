"""Worker for test_donation.py: each sweep step's accumulator on a 2 x 2 mesh (replicated
weights under `shard_map`, sharded weights under GSPMD), as a JSON report. Run with 4
simulated CPU devices and warnings as errors."""

import json
import warnings

import jax
import numpy as np

import qlens_jax  # noqa: F401  (XLA flags before JAX starts)
from kernel_fixtures import setup
from qlens_jax import sharding
from qlens_jax.lens import operators
from test_donation import aliased_argument_types, aliased_outputs, step_arguments

# One step with one output (basis-major), one with two (block-major, both sides): the mesh
# changes the step's wrapper, not the sweep inside.
STEPS = [("value", None), ("value+key", (1, 2))]


def main():
    assert len(jax.devices()) == 4, jax.devices()
    warnings.simplefilter("error")
    _, model, _, tokens, mask = setup("gpt2")
    mesh = sharding.make_mesh((2, 2))
    report = {}
    for placement, weights_sharded in (("replicated", False), ("sharded", True)):
        placed = sharding.place_weights(model, mesh, weights_sharded)
        assert sharding.vocab_sharded(placed) == weights_sharded
        report[placement] = []
        for name, blocks in STEPS:
            step = operators.sharded_sweep(name, mesh, 4, True, weights_sharded, blocks)
            args = step_arguments(placed, tokens, mask, mesh, name, True)
            totals = jax.tree.leaves(args[-1])
            lowered = step.lower(*args)
            sums = jax.tree.leaves(step(*args[:-1]))
            updated = jax.tree.leaves(step(*args))
            report[placement].append(
                {
                    "step": [name, blocks],
                    "accumulator_types": [f"tensor<{'x'.join(map(str, t.shape))}xf32>" for t in totals],
                    "aliased_arguments": aliased_argument_types(lowered.as_text()),
                    "outputs": len(totals),
                    "aliased_outputs": len(aliased_outputs(lowered.compile().as_text())),
                    "deleted": [t.is_deleted() for t in totals],
                    "bitwise_equal_to_sums": all(
                        np.asarray(u).tobytes() == np.asarray(s).tobytes() for u, s in zip(updated, sums)
                    ),
                }
            )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
