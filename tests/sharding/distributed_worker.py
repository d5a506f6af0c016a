"""One process of a multi-process run on localhost: `python distributed_worker.py PORT N ID OUT`.

Every process joins `jax.distributed`, builds the same model, dictionaries and token sample,
and runs the same dense `query_lens` on a mesh over all processes' devices; process 0 writes
the signatures to OUT (an .npz), the others write nothing.
"""

import sys

import jax
import numpy as np


def main(port: str, n_processes: str, process_id: str, out: str) -> None:
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{port}", num_processes=int(n_processes), process_id=int(process_id)
    )
    import converters
    import qlens_jax
    from kernel_fixtures import dictionary_set
    from qlens_jax import sharding
    from tiny_models import build_hf_model, padded_batch

    model = converters.load_model(build_hf_model("gpt2"))
    dictionaries = dictionary_set(model.config.d_model, model.config.n_layers)[:2]
    tokens, mask = padded_batch(model.config.vocab_size, batch=8, seq=9, seed=3)
    mesh = sharding.make_mesh() if int(n_processes) > 1 else None
    signatures = qlens_jax.query_lens(
        model,
        dictionaries,
        tokens,
        mask,
        lenses=("query_lens_value", "query_lens_key"),
        k=10,
        path="dense",
        mesh=mesh,
        sequences_per_chunk=1,
    )
    if jax.process_index() == 0:
        np.savez(
            out,
            **{
                f"{t.lens}-{i}-{field}": getattr(t, field)
                for i, t in enumerate(signatures)
                for field in ("top_ids", "top_scores", "bottom_ids")
            },
        )


if __name__ == "__main__":
    main(*sys.argv[1:])
