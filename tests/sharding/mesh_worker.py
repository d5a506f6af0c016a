"""Run in a subprocess with 8 simulated CPU devices (XLA_FLAGS set by the caller): compute
signatures on several meshes and report numbers and shardings as JSON on stdout."""

import json
import re
import sys

import jax
import numpy as np

import converters
import qlens_jax
from kernel_fixtures import dictionary_set
from qlens_jax import sharding
from qlens_jax.readout import ReadoutContext, centered_embeddings
from qlens_jax.readout.programs import readout_chunks
from qlens_jax.readout.streaming import chunked
from tiny_models import build_hf_model, padded_batch


def main():
    assert len(jax.devices()) == 8, jax.devices()
    model = converters.load_model(build_hf_model("gpt2"))
    dictionaries = dictionary_set(model.config.d_model, model.config.n_layers)[:2]
    tokens, mask = padded_batch(model.config.vocab_size, batch=8, seq=9, seed=3)
    lenses = ("query_lens_value", "query_lens_key", "logit_lens_value")
    report = {}
    for shape in [(1, 1), (4, 2), (2, 4)]:
        devices = jax.devices()[: shape[0] * shape[1]]
        mesh = sharding.make_mesh(shape, devices)
        ops = qlens_jax.transport_operators(
            model, tokens, mask, sweeps=("value", "key"), mesh=mesh, sequences_per_chunk=1
        )
        sigs = qlens_jax.query_lens(
            model, dictionaries, tokens, mask, lenses=lenses, k=10, operators=ops, mesh=mesh, self_check=False
        )
        sweep = qlens_jax.lens.operators.sharded_sweep("value", mesh, 1)
        hlo = (
            sweep.lower(
                sharding.replicate(model, mesh),
                sharding.put(tokens[: shape[0]], mesh, "batch", None),
                sharding.put(mask[: shape[0]], mesh, "batch", None),
                sharding.put(np.arange(model.config.d_model), mesh, "basis"),
            )
            .compile()
            .as_text()
        )
        context = ReadoutContext(model, centered_embeddings(model, tokens, mask), False, 10, 16, mesh)
        chunks, _ = chunked(np.asarray(dictionaries[0].value_vectors()), 16, context.layout)
        score_fn = context.score_fn("value", ops.value[2])
        readout = readout_chunks(score_fn, chunks, 10, context.layout)
        readout_hlo = (
            jax.jit(lambda c: readout_chunks(score_fn, c, 10, context.layout)).lower(chunks).compile().as_text()
        )
        topk_rows = sorted({int(m) for m in re.findall(r"\(f32\[(\d+),10\][^)]*\) custom-call", readout_hlo)})
        report[str(shape)] = {
            "scores": [t.top_scores.tolist() for t in sigs],
            "ids": [t.top_ids.tolist() for t in sigs],
            "operator_spec": list(ops.value.sharding.spec),
            "operator_shard_shapes": sorted({tuple(s.data.shape) for s in ops.value.addressable_shards}),
            "operator_devices": len({s.device for s in ops.value.addressable_shards}),
            "sweep_has_all_reduce": "all-reduce" in hlo,
            "readout_spec": list(readout.top_ids.sharding.spec),
            "readout_shard_shapes": sorted({tuple(s.data.shape) for s in readout.top_ids.addressable_shards}),
            "readout_shape": list(readout.top_ids.shape),
            "readout_has_all_gather": "all-gather" in readout_hlo,
            "readout_topk_rows": topk_rows,
        }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
