"""Run in a subprocess with 8 simulated CPU devices (XLA_FLAGS set by the caller): signatures
with the model's weights sharded over the mesh (`shard_weights=True`), and evidence that they
really are split (shard shapes, and array shapes in the compiled per-device programs), as JSON."""

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np

import converters
import qlens_jax
from kernel_fixtures import dictionary_set
from qlens_jax import memory, sharding
from qlens_jax.lens import operators
from qlens_jax.readout import Layout, ReadoutContext, centered_embeddings, top_and_bottom
from qlens_jax.readout.programs import readout_chunks
from qlens_jax.readout.streaming import chunked
from tiny_models import build_hf_model, padded_batch

LENSES = ("query_lens_value", "query_lens_key", "logit_lens_key", "first_order_value")


def shard_shapes(array) -> list:
    return sorted({tuple(s.data.shape) for s in array.addressable_shards})


def full_vocab_shapes(hlo: str, vocab: int, padded: int) -> list[str]:
    """Array shapes in a compiled program with a whole-vocabulary dimension (none if split)."""
    return sorted(set(re.findall(rf"\w+\[(?:\d+,)*(?:{vocab}|{padded})(?:,\d+)*\]", hlo)))


def compiled_programs(model, placed, mesh, tokens, mask, dictionary, vocab: int) -> dict:
    """The compiled value sweep and value readout on sharded weights: their collectives, and
    any array with a whole vocabulary dimension (the weights or scores, if not split)."""
    padded = placed.embed_tokens.shape[0]
    n_data = mesh.shape["data"]
    sweep = (
        operators.sharded_sweep("value", mesh, 1, False, True)
        .lower(
            placed,
            sharding.put(tokens[:n_data], mesh, "batch", None),
            sharding.put(mask[:n_data], mesh, "batch", None),
            sharding.put(np.arange(model.config.d_model), mesh, "basis"),
        )
        .compile()
        .as_text()
    )
    context = ReadoutContext(placed, centered_embeddings(placed, tokens, mask), False, 10, 16, mesh)
    chunk, _ = chunked(np.asarray(dictionary.value_vectors()), 16, context.layout)
    score_fn = context.score_fn("value")
    compiled = readout_chunks.lower(score_fn, chunk, 10, context.layout).compile()
    readout, result = compiled.compiled.as_text(), compiled(score_fn, chunk, 10, context.layout)
    return {
        "sweep_full_vocab": full_vocab_shapes(sweep, vocab, padded),
        "sweep_has_all_reduce": "all-reduce(" in sweep,
        "readout_full_vocab": full_vocab_shapes(readout, vocab, padded),
        "readout_has_all_gather": "all-gather(" in readout,
        "readout_spec": [a if isinstance(a, (str, type(None))) else list(a) for a in result.top_ids.sharding.spec],
        "key_matrix_shards": shard_shapes(context.key_matrix),
    }


def split_topk_matches(mesh, vocab: int, k: int = 40) -> bool:
    """The merged per-shard top/bottom-k equals one `top_k` over the real vocabulary on scores
    full of ties, with padding columns holding the largest and smallest scores (which must be
    ignored), and `k` wider than a shard."""
    n_vocab = sharding.axis_size(mesh, "vocab")
    scores = np.random.default_rng(0).integers(0, 3, size=(8, -(-vocab // n_vocab) * n_vocab)).astype(np.float32)
    scores[:, vocab:] = np.where(np.arange(scores.shape[1] - vocab) % 2, 99.0, -99.0)
    layout = Layout(vocab, mesh, split_vocab=True)
    placed = jax.device_put(scores, sharding.named(mesh, layout.row_axis, "vocab"))
    split = jax.jit(lambda s: layout.topk(s, k))(placed)
    whole = top_and_bottom(jnp.asarray(scores[:, :vocab]), k)
    return all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(split, whole))


def main():
    assert len(jax.devices()) == 8, jax.devices()
    model = converters.load_model(build_hf_model("gpt2-untied-scaled"))
    c = model.config
    dictionaries = dictionary_set(c.d_model, c.n_layers)[:2]
    tokens, mask = padded_batch(c.vocab_size, batch=8, seq=9, seed=3)
    signatures = lambda mesh, shard: qlens_jax.query_lens(
        model,
        dictionaries,
        tokens,
        mask,
        lenses=LENSES,
        k=10,
        path="dense",
        mesh=mesh,
        shard_weights=shard,
        self_check=False,
        sequences_per_chunk=1,
    )
    report = {"vocab": c.vocab_size, "d_model": c.d_model, "d_mlp": c.d_mlp}
    for shape, shard in [((1, 1), False), ((2, 4), True), ((4, 2), True)]:
        mesh = sharding.make_mesh(shape, jax.devices()[: shape[0] * shape[1]])
        sigs = signatures(mesh, shard)
        entry = {
            "ids": [[t.top_ids.tolist(), t.bottom_ids.tolist()] for t in sigs],
            "scores": [[t.top_scores.tolist(), t.bottom_scores.tolist()] for t in sigs],
            "layer_ids": [t.layer_top_ids.tolist() for t in sigs if t.lens.startswith("first_order")],
        }
        if shard:
            placed = sharding.shard_weights(model, mesh)
            entry |= {
                "embed_shards": shard_shapes(placed.embed_tokens),
                "lm_head_shards": shard_shapes(placed.lm_head),
                "up_proj_shards": shard_shapes(placed.blocks.mlp.up_proj.weight),
                "down_proj_shards": shard_shapes(placed.blocks.mlp.down_proj.weight),
                "attention_shards": shard_shapes(placed.blocks.attn.q_proj.weight),
                **compiled_programs(model, placed, mesh, tokens, mask, dictionaries[0], c.vocab_size),
                "split_topk_matches": split_topk_matches(mesh, c.vocab_size),
            }
        report[str(shape)] = entry
    mesh = sharding.make_mesh((2, 4))
    # Control: the same checks on replicated weights must see whole-vocabulary arrays.
    control = compiled_programs(
        model, sharding.replicate(model, mesh), mesh, tokens, mask, dictionaries[0], c.vocab_size
    )
    report["replicated_control"] = {k: control[k] for k in ("sweep_full_vocab", "readout_full_vocab")}
    report["auto"] = {
        "tiny_free": sharding.should_shard_weights(model, mesh, free_gb=1e-6),
        "large_free": sharding.should_shard_weights(model, mesh, free_gb=1e3),
        "no_feature_axis": sharding.should_shard_weights(model, sharding.make_mesh((8, 1)), free_gb=1e-6),
    }
    memory.available_memory_gb = lambda device=None: 1e-6  # what `place_weights` measures by default
    report["auto"]["placed_when_tight"] = shard_shapes(sharding.place_weights(model, mesh).embed_tokens)
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
