"""`qlens signatures`: the main job, resumable shard by shard.

Stages: inputs (load, check, sample) -> run folder (fingerprint; refuse a different run,
continue the same one) -> dense transport operators (computed once, cached in DIR) ->
readout shards, one Parquet file per (lens, dictionary, feature chunk), each written
atomically as it finishes -> `signatures.parquet` assembled from the shards in a fixed order.

Every shard of a run has the same width (the last chunk of a dictionary is padded with
repeats of its last feature, dropped before writing), so the readout compiles once per lens.
The chunk sizes are fixed at the first start and stored in run.json: a resumed run uses
the same ones, so its output is byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import jax
import numpy as np

from qlens_jax import distributed
from qlens_jax.io import hashing
from qlens_jax.io.atomic import publish, temporary_path
from qlens_jax.io.parquet import assemble, signature_rows, write_table
from qlens_jax.io.rundir import RunDir
from qlens_jax.job.inputs import Inputs, prepare
from qlens_jax.progress import progress

SWEEP_OF_LENS = {"query_lens_value": "value", "query_lens_key": "key", "first_order_value": "first_order", "first_order_key": "first_order"}
# Options that change the numbers or the shard layout (the rest: --quiet, --memory-budget-gb...).
OUTPUT_OPTIONS = (
    "lenses", "k", "dtype", "path", "stats", "shard_size", "remove_final_norm_bias",
    "first_order_key_mask_seed", "exact_norm_jacobian",
)


@dataclass(frozen=True)
class Shard:
    lens: str
    dictionary_index: int
    chunk: int
    features: np.ndarray  # the real feature ids of this shard (before padding)

    @property
    def name(self) -> str:
        return f"{self.lens}.d{self.dictionary_index:03d}.c{self.chunk:05d}"


def shard_plan(lenses, features: list[np.ndarray], shard_size: int) -> list[Shard]:
    """All shards in output order: lens, then dictionary, then feature chunk."""
    return [
        Shard(lens, d, c, ids[start : start + shard_size])
        for lens in lenses
        for d, ids in enumerate(features)
        for c, start in enumerate(range(0, len(ids), shard_size))
    ]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _json_value(value):
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _manifest(args, argv, inputs: Inputs, plan: dict) -> dict:
    dictionaries = [
        {
            "source": d.info.source, "format": d.info.format, "name": d.name, "layer": d.layer, "kind": d.kind,
            "site_in": d.site_in, "site_out": d.site_out, "d_sae": d.d_sae, "sha256": hashing.dictionary_hash(d),
            "features": int(len(ids)), "features_sha256": hashing.arrays_hash(ids),
        }
        for d, ids in zip(inputs.dictionaries, inputs.features)
    ]
    sample = dict(inputs.description["sample"])
    sample["sha256"] = hashing.arrays_hash(inputs.tokens, inputs.mask)
    sample["shape"] = list(inputs.tokens.shape)
    sample["valid_tokens"] = int(inputs.mask.sum())
    corpus = sample.get("corpus") or sample.get("token_sample")
    sample["file_sha256"] = hashing.path_hash(corpus)
    model = {"source": args.model, "path": str(inputs.model_dir), "sha256": hashing.model_hash(inputs.model),
             "config": {k: v for k, v in vars(inputs.model.config).items() if not isinstance(v, tuple)}}
    tokenizer = {"source": args.tokenizer or args.model, "sha256": hashing.text_hash(inputs.tokenizer.to_str())}
    options = {key: _json_value(value) for key, value in vars(args).items() if not key.startswith("_")}
    fingerprint_inputs = {
        "model": model["sha256"],
        "tokenizer": tokenizer["sha256"],
        "dictionaries": [[d["sha256"], d["features_sha256"]] for d in dictionaries],
        "feature_strs": hashing.json_hash([sorted(s.items()) for s in inputs.feature_strs]),
        "sample": sample["sha256"],
        **{key: options[key] for key in OUTPUT_OPTIONS},
    }
    return {
        "command": ["qlens", *argv],
        "status": "running",
        "fingerprint": hashing.json_hash(fingerprint_inputs),
        "fingerprint_inputs": fingerprint_inputs,
        "inputs": {"model": model, "tokenizer": tokenizer, "dictionaries": dictionaries, "sample": sample},
        "options": options,
        "plan": plan,
        "sessions": [{"started": _now(), "versions": hashing.versions()}],
    }


def _plan(args, inputs: Inputs, model) -> dict:
    from qlens_jax.lens import auto
    from qlens_jax.lens.chunks import default_budget_gb, plan_chunks
    from qlens_jax.lens.readout import feature_chunk_for

    budget = args.memory_budget_gb or default_budget_gb()
    chunks = plan_chunks(model, inputs.tokens.shape, budget)
    n_features = sum(len(ids) for ids in inputs.features)
    path = auto.path(args.path, n_features, model.config.d_model)
    return {
        "path": path,
        "memory_budget_gb": budget,
        "sequences_per_chunk": chunks.sequences_per_chunk,
        "tangent_chunk": chunks.tangent_chunk,
        "feature_chunk": feature_chunk_for(model.config.vocab_size, 0.25 * budget * 2**30),
        "shard_width": int(min(args.shard_size, max(len(ids) for ids in inputs.features))),
    }


def _shard_weights(args) -> bool | None:
    return {"auto": None, "sharded": True, "replicated": False}[args.weights]


def _operators(args, run: RunDir | None, model, inputs: Inputs, lenses, plan: dict, mesh, quiet: bool):
    """The dense operators this run's lenses need: loaded from DIR, or computed and saved.

    In a multi-process job every process takes part in computing them; process 0 (the only
    one with `run`) saves them, or loads them and broadcasts them to the others.
    """
    from qlens_jax import sharding
    from qlens_jax.lens import ChunkPlan, TransportOperators, load_operators, save_operators, transport_operators
    from qlens_jax.lens.points import dictionary_points

    sweeps = tuple(sorted({SWEEP_OF_LENS[lens] for lens in lenses if lens in SWEEP_OF_LENS}))
    if plan["path"] != "dense" or not sweeps:
        return None
    fields = ("value", "key", "first_order", "first_order_all")
    if distributed.share(run.operators.exists() if run else None):
        operators = load_operators(run.operators) if run else None
        if not distributed.is_multiprocess():
            return operators
        static = ("n_tokens", "value_from_point", "key_to_point")
        static = distributed.share({f: getattr(operators, f) for f in static} if run else None)
        host = {f: np.asarray(getattr(operators, f)) for f in fields if getattr(operators, f) is not None} if run else None
        host = distributed.share_arrays(host)
        return TransportOperators(**{f: host.get(f) for f in fields}, **static)
    chunk_plan = ChunkPlan(plan["sequences_per_chunk"], plan["tangent_chunk"])
    # Sweep only the blocks between the embedding / the top and this run's dictionaries.
    n_layers = model.config.n_layers
    points = [dictionary_points(d.site_in, d.site_out, d.layer, n_layers) for d in inputs.dictionaries]
    operators = transport_operators(model, inputs.tokens, inputs.mask, sweeps=sweeps, plan=chunk_plan, mesh=mesh,
                                    shard_weights=_shard_weights(args), quiet=quiet,
                                    memory_budget_gb=plan["memory_budget_gb"], value_from_point=min(p.write for p in points),
                                    key_to_point=max(p.read_residual for p in points))
    # Gathering to the host is a collective: every process, before process 0 saves alone.
    host = jax.tree.map(sharding.to_host, operators) if distributed.is_multiprocess() else operators
    if run:
        temporary = temporary_path(run.operators)
        save_operators(host, temporary)
        publish(temporary, run.operators)
    return operators


def _slow_shards():
    """Tests only: QLENS_TEST_SLOW_SHARDS=seconds pauses before each shard is published."""
    seconds = os.environ.get("QLENS_TEST_SLOW_SHARDS")
    return (lambda: time.sleep(float(seconds))) if seconds else None


def _compute_shard(args, inputs: Inputs, model, operators, plan: dict, mesh, shard: Shard, self_check: bool):
    from qlens_jax.lens import query_lens

    width = plan["shard_width"]
    ids = shard.features
    padded = np.concatenate([ids, np.full(width - len(ids), ids[-1])]) if len(ids) < width else ids
    dictionary = inputs.dictionaries[shard.dictionary_index]
    (table,) = query_lens(
        model, [dictionary], inputs.tokens, inputs.mask, lenses=(shard.lens,), features=padded, k=args.k,
        dtype=args.dtype, path=plan["path"], stats=args.stats, self_check=self_check,
        remove_final_norm_bias=args.remove_final_norm_bias, first_order_key_mask_seed=args.first_order_key_mask_seed,
        exact_norm_jacobian=args.exact_norm_jacobian, operators=operators, mesh=mesh, shard_weights=_shard_weights(args),
        memory_budget_gb=plan["memory_budget_gb"], sequences_per_chunk=plan["sequences_per_chunk"],
        tangent_chunk=plan["tangent_chunk"], feature_chunk=plan["feature_chunk"], quiet=True,
    )
    reference = inputs.feature_strs[shard.dictionary_index]
    feature_strs = [reference.get(int(i)) or dictionary.feature_str(int(i)) for i in ids]
    return signature_rows(table, keep=len(ids), dictionary_index=shard.dictionary_index, feature_strs=feature_strs, vocab=inputs.vocab)


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours}h{minutes:02d}m{seconds:02.0f}s" if hours else (f"{minutes}m{seconds:02.0f}s" if minutes else f"{seconds:.1f}s")


def _start_session(run: RunDir, shards: list[Shard], inputs: Inputs, mesh) -> dict:
    """Process 0: record this session, save the sample; what every process needs to know."""
    from qlens_jax.corpus import save_token_sample

    session = run.manifest["sessions"][-1]
    remaining = [s.name for s in shards if not run.shard_path(s.name).exists()]
    session.update(resumed=run.resumed, shards_done_at_start=len(shards) - len(remaining), shards=len(shards),
                   processes=jax.process_count(), devices=jax.device_count(),
                   mesh=dict(mesh.shape) if mesh is not None else {"data": 1, "feature": 1})
    finished = not remaining and run.manifest.get("status") == "complete" and run.signatures.exists()
    if not finished:  # a finished run stays "complete" for readers (export, view) while restarted
        run.manifest["status"] = "running"
        run.save()
    if not run.sample.exists():
        temporary = temporary_path(run.sample)
        save_token_sample(temporary, inputs.tokens, inputs.mask)
        publish(temporary, run.sample)
    return {"plan": run.manifest["plan"], "remaining": remaining, "finished": finished}


def _finish(run: RunDir, shards: list[Shard], finished: bool, timings: dict, start: float) -> int:
    """Process 0: assemble `signatures.parquet` from the shards; mark the run complete."""
    t = time.perf_counter()
    if finished:
        n_rows = run.manifest["outputs"]["signatures.parquet"]["rows"]
    else:
        n_rows = assemble([run.shard_path(s.name) for s in shards], run.signatures)
    timings["assemble"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - start
    run.manifest["sessions"][-1].update(finished=_now(), timings={k: round(v, 3) for k, v in timings.items()})
    run.manifest["status"] = "complete"
    if not finished:
        run.manifest["outputs"] = {"signatures.parquet": {"rows": n_rows, "sha256": hashing.path_hash(run.signatures)}}
    run.save()
    return n_rows


def run_signatures(args, argv) -> int:
    """The whole job; returns the exit code (0). Bad inputs raise `InputError` before any work.

    With `--distributed` every process runs this function: all of them load the inputs and
    compute every shard together over a mesh of all devices; process 0 alone opens DIR
    (run.json, lock, shards, operators, signatures.parquet) and tells the others what is left.
    """
    from qlens_jax.job.inputs import job_mesh
    from qlens_jax.lens import cast_model

    if args.distributed:
        distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    writer = distributed.is_writer()
    quiet = args.quiet or not writer
    timings: dict[str, float] = {}
    start = time.perf_counter()
    inputs = distributed.checked(lambda: prepare(args, quiet, writes_output=writer))
    timings["inputs"] = time.perf_counter() - start
    model = cast_model(inputs.model, args.dtype) if args.dtype != "float32" else inputs.model
    mesh = distributed.checked(lambda: job_mesh(args, model))
    shards = shard_plan(args.lenses, inputs.features, args.shard_size)
    run = distributed.checked(
        lambda: RunDir.open(args.out, _manifest(args, argv, inputs, _plan(args, inputs, model))) if writer else None
    )
    try:
        state = distributed.share(_start_session(run, shards, inputs, mesh) if run else None)
        plan, todo = state["plan"], set(state["remaining"])

        t = time.perf_counter()
        operators = _operators(args, run, model, inputs, {s.lens for s in shards if s.name in todo}, plan, mesh, quiet) if todo else None
        timings["operators"] = time.perf_counter() - t

        t = time.perf_counter()
        before_publish = _slow_shards()
        groups: dict[tuple[str, int], list[Shard]] = {}
        for shard in shards:
            groups.setdefault((shard.lens, shard.dictionary_index), []).append(shard)
        for (lens, index), group in groups.items():
            left = [s for s in group if s.name in todo]
            if not left:
                continue
            dictionary = inputs.dictionaries[index]
            desc = f"readout {lens} L{dictionary.layer} {dictionary.name}"
            for shard in progress(left, desc=desc, quiet=quiet, unit="shard", total=len(group), initial=len(group) - len(left)):
                self_check = args.self_check and shard.chunk == 0
                rows = _compute_shard(args, inputs, model, operators, plan, mesh, shard, self_check)
                if run:
                    write_table(run.shard_path(shard.name), rows, before_publish)
        timings["readout"] = time.perf_counter() - t
        n_rows = _finish(run, shards, state["finished"], timings, start) if run else None
    finally:
        if run:
            run.close()
    if not writer:
        return 0

    session = run.manifest["sessions"][-1]
    n_features = sum(len(ids) for ids in inputs.features)
    resumed = f"; resumed with {session['shards_done_at_start']}/{len(shards)} shards done" if run.resumed else ""
    processes = f" on {jax.process_count()} processes" if distributed.is_multiprocess() else ""
    print(
        f"qlens: {n_rows} signatures ({n_features} features x {len(args.lenses)} lenses, "
        f"{len(inputs.dictionaries)} dictionaries) -> {run.signatures} in {_duration(timings['total'])}{processes} "
        f"(inputs {_duration(timings['inputs'])}, operators {_duration(timings['operators'])}, "
        f"readout {_duration(timings['readout'])}){resumed}",
        file=sys.stdout,
    )
    return 0
