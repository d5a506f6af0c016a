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
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import jax
import numpy as np

from qlens_jax import distributed
from qlens_jax.io import hashing
from qlens_jax.io.atomic import publish, temporary_path
from qlens_jax.io.parquet import assemble, signature_rows, write_table
from qlens_jax.io.rundir import RunDir
from qlens_jax.job.inputs import Inputs, prepare
from qlens_jax.job.lenses import RunPlans, Skipped, run_plans, skipped_lenses
from qlens_jax.job.spec import JobOptions, SignaturesJob
from qlens_jax.lens.operators import TransportOperators
from qlens_jax.lens.plan import LensPlan
from qlens_jax.lens.points import Point
from qlens_jax.progress import progress

# Options that change the numbers or the shard layout (the rest: --quiet, --memory-budget-gb...).
OUTPUT_OPTIONS = (
    "lenses",
    "k",
    "dtype",
    "precision",
    "path",
    "stats",
    "shard_size",
    "remove_final_norm_bias",
    "first_order_key_mask_seed",
    "exact_norm_jacobian",
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


def shard_plan(lenses, features: list[np.ndarray], shard_size: int, skipped: list[Skipped] = ()) -> list[Shard]:
    """All shards in output order: lens, then dictionary, then feature chunk (none for the
    `skipped` lens and dictionary pairs)."""
    left_out = {(s.lens, s.dictionary_index) for s in skipped}
    return [
        Shard(lens, d, c, ids[start : start + shard_size])
        for lens in lenses
        for d, ids in enumerate(features)
        if (lens, d) not in left_out
        for c, start in enumerate(range(0, len(ids), shard_size))
    ]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json_value(value):
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _manifest(job: SignaturesJob, argv, inputs: Inputs, plan: dict, skipped: list[Skipped]) -> dict:
    dictionaries = [
        {
            "source": d.info.source,
            "format": d.info.format,
            "name": d.name,
            "layer": d.layer,
            "kind": d.kind,
            "site_in": d.site_in,
            "site_out": d.site_out,
            "d_sae": d.d_sae,
            "sha256": hashing.dictionary_hash(d),
            "features": int(len(ids)),
            "features_sha256": hashing.arrays_hash(ids),
        }
        for d, ids in zip(inputs.dictionaries, inputs.features)
    ]
    sample = dict(inputs.description["sample"])
    sample["sha256"] = hashing.arrays_hash(inputs.tokens, inputs.mask)
    sample["shape"] = list(inputs.tokens.shape)
    sample["valid_tokens"] = int(inputs.mask.sum())
    corpus = sample.get("corpus") or sample.get("token_sample")
    sample["file_sha256"] = hashing.path_hash(corpus)
    model = {
        "source": job.model.model,
        "path": str(inputs.model_dir),
        "sha256": hashing.model_hash(inputs.model),
        "config": {k: v for k, v in vars(inputs.model.config).items() if not isinstance(v, tuple)},
    }
    tokenizer = {
        "source": job.model.tokenizer or job.model.model,
        "sha256": hashing.text_hash(inputs.tokenizer.to_str()),
    }
    options = {key: _json_value(value) for key, value in job.record().items()}
    fingerprint_inputs = {
        "model": model["sha256"],
        "tokenizer": tokenizer["sha256"],
        "dictionaries": [[d["sha256"], d["features_sha256"]] for d in dictionaries],
        "feature_strs": hashing.json_hash([sorted(s.items()) for s in inputs.feature_strs]),
        "sample": sample["sha256"],
        **{key: options[key] for key in OUTPUT_OPTIONS},
        **job.options.lens.analysis_changes(),
    }
    return {
        "command": ["qlens", *argv],
        "status": "running",
        "fingerprint": hashing.json_hash(fingerprint_inputs),
        "fingerprint_inputs": fingerprint_inputs,
        "inputs": {"model": model, "tokenizer": tokenizer, "dictionaries": dictionaries, "sample": sample},
        "options": options,
        "plan": plan,
        "skipped": [s.record() for s in skipped],
        "sessions": [{"started": _now(), "versions": hashing.versions()}],
    }


def _plan(options: JobOptions, inputs: Inputs, first: LensPlan) -> dict:
    """How this run is cut (path, chunk sizes, shard width): fixed at the first start and
    stored in run.json, so a resumed run cuts its work the same way."""
    from qlens_jax.readout import feature_chunk_for

    budget = first.execution.memory_budget_gb
    return {
        "path": first.path,
        "memory_budget_gb": budget,
        "sequences_per_chunk": first.chunks.sequences_per_chunk,
        "tangent_chunk": first.chunks.tangent_chunk,
        "feature_chunk": feature_chunk_for(first.model.config.vocab_size, 0.25 * budget * 2**30),
        "shard_width": int(min(options.shard_size, max(len(ids) for ids in inputs.features))),
    }


def lens_plan(
    options: JobOptions,
    inputs: Inputs,
    mesh,
    lenses: tuple[str, ...] | None = None,
    positions: list[int] | None = None,
    model=None,
) -> LensPlan:
    """The kernel's plan of the whole run (or of `lenses` over the dictionaries at run
    `positions`): every dictionary and feature validated once; path and chunk sizes planned
    from the budget (what a first start stores in run.json). `model`: the model to plan with
    (another plan's, already cast and placed), else the run's."""
    from qlens_jax import memory
    from qlens_jax.lens import plan_request

    positions = list(range(len(inputs.dictionaries))) if positions is None else positions
    budget = options.execution.memory_budget_gb or memory.default_budget_gb(memory.planning_device(mesh))
    execution = replace(
        options.execution, mesh=mesh, shard_weights=_shard_weights(options), quiet=True, memory_budget_gb=float(budget)
    )
    return plan_request(
        inputs.model if model is None else model,
        [inputs.dictionaries[i] for i in positions],
        inputs.tokens,
        inputs.mask,
        lenses=options.lenses if lenses is None else lenses,
        features={n: inputs.features[i] for n, i in enumerate(positions)},
        options=options.lens,
        execution=execution,
    )


def lens_plans(options: JobOptions, inputs: Inputs, mesh, skipped: list[Skipped]) -> RunPlans:
    """The run's kernel plans (`job.lenses.RunPlans`): one for the lenses every dictionary has,
    one per lens skipped for some dictionaries (over the others), all with one model."""
    model = None

    def plan(lenses, positions):
        nonlocal model
        made = lens_plan(options, inputs, mesh, lenses, positions, model)
        model = made.model
        return made

    return run_plans(options.lenses, inputs.dictionaries, skipped, plan)


def with_stored_plan(plan: LensPlan, stored: dict, quiet: bool) -> LensPlan:
    """`plan` cut as run.json's stored plan says (a resumed run cuts its work as it started)."""
    from qlens_jax.lens import ChunkPlan

    execution = replace(
        plan.execution,
        path=stored["path"],
        memory_budget_gb=stored["memory_budget_gb"],
        sequences_per_chunk=stored["sequences_per_chunk"],
        tangent_chunk=stored["tangent_chunk"],
        feature_chunk=stored["feature_chunk"],
        quiet=quiet,
    )
    chunks = ChunkPlan(stored["sequences_per_chunk"], stored["tangent_chunk"])
    return replace(plan, path=stored["path"], chunks=chunks, execution=execution)


def _shard_weights(options: JobOptions) -> bool | None:
    return {"auto": None, "sharded": True, "replicated": False}[options.weights]


def precision_kwargs(precision: str) -> dict:
    """The `precision=` keyword of the kernel entry points (the baselines, the channel
    analysis) for `--precision`."""
    return {"precision": precision}


def _operators(run: RunDir | None, plan: LensPlan, lenses) -> TransportOperators | None:
    """The dense operators `lenses` need: loaded from DIR, or computed and saved.

    In a multi-process job every process takes part in computing them; process 0 (the only
    one with `run`) saves them, or loads them and broadcasts them to the others.
    """
    from qlens_jax import sharding
    from qlens_jax.lens import TransportOperators, load_operators, save_operators, transport_operators_for

    plan = plan.select(lenses=tuple(lens for lens in plan.lenses if lens in lenses))
    if plan.path != "dense" or not plan.transport_lenses:
        return None
    fields = (
        "value",
        "key",
        "first_order",
        "first_order_all",
        "value_at_sites",
        "key_at_sites",
        "z_hop_value",
        "z_hop_key",
        "z_hop_key_all",
    )
    if distributed.share(run.operators.exists() if run else None):
        operators = load_operators(run.operators) if run else None
        if not distributed.is_multiprocess():
            return operators
        static = ("n_tokens", "value_from_point", "key_to_point")
        static = distributed.share({f: getattr(operators, f) for f in static} if run else None)
        sites = distributed.share([[p.site, p.layer] for p in operators.sites] if run else None)
        host = (
            {f: np.asarray(getattr(operators, f)) for f in fields if getattr(operators, f) is not None} if run else None
        )
        host = distributed.share_arrays(host)
        return TransportOperators(**{f: host.get(f) for f in fields}, **static, sites=tuple(Point(*p) for p in sites))
    # Sweeps only the blocks between the embedding / the top and this run's dictionaries.
    operators = transport_operators_for(plan)
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


def _compute_shard(inputs: Inputs, plans: RunPlans, operators, shard: Shard, width: int, self_check: bool):
    """The signature rows of one shard: its features, padded to the run's shard width (one
    compilation per lens), read out under its lens, the padding dropped."""
    from qlens_jax.lens import read_signatures

    ids = shard.features
    padded = np.concatenate([ids, np.full(width - len(ids), ids[-1])]) if len(ids) < width else ids
    plan, position = plans.for_lens(shard.lens, shard.dictionary_index)
    part = plan.select(lenses=(shard.lens,), features={position: padded})
    (table,) = read_signatures(replace(part, execution=replace(part.execution, self_check=self_check)), operators)
    dictionary = inputs.dictionaries[shard.dictionary_index]
    reference = inputs.feature_strs[shard.dictionary_index]
    feature_strs = [reference.get(int(i)) or dictionary.feature_str(int(i)) for i in ids]
    return signature_rows(
        table, keep=len(ids), dictionary_index=shard.dictionary_index, feature_strs=feature_strs, vocab=inputs.vocab
    )


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return (
        f"{hours}h{minutes:02d}m{seconds:02.0f}s"
        if hours
        else (f"{minutes}m{seconds:02.0f}s" if minutes else f"{seconds:.1f}s")
    )


def _start_session(run: RunDir, shards: list[Shard], inputs: Inputs, mesh) -> dict:
    """Process 0: record this session, save the sample; what every process needs to know."""
    from qlens_jax.corpus import save_token_sample

    session = run.manifest["sessions"][-1]
    remaining = [s.name for s in shards if not run.shard_path(s.name).exists()]
    session.update(
        resumed=run.resumed,
        shards_done_at_start=len(shards) - len(remaining),
        shards=len(shards),
        processes=jax.process_count(),
        devices=jax.device_count(),
        mesh=dict(mesh.shape) if mesh is not None else {"data": 1, "feature": 1},
    )
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


def run_signatures(job: SignaturesJob, argv: list[str]) -> int:
    """The whole job; returns the exit code (0). Bad inputs raise `InputError` before any work.

    With `--distributed` every process runs this function: all of them load the inputs and
    compute every shard together over a mesh of all devices; process 0 alone opens DIR
    (run.json, lock, shards, operators, signatures.parquet) and tells the others what is left.
    """
    from qlens_jax.job.inputs import job_mesh

    options = job.options
    if options.distributed:
        distributed.initialize(options.coordinator, options.num_processes, options.process_id)
    writer = distributed.is_writer()
    quiet = options.execution.quiet or not writer
    timings: dict[str, float] = {}
    start = time.perf_counter()
    inputs = distributed.checked(lambda: prepare(job, quiet, writes_output=writer))
    timings["inputs"] = time.perf_counter() - start
    skipped = distributed.checked(lambda: skipped_lenses(options.lenses, inputs.dictionaries))
    mesh = distributed.checked(lambda: job_mesh(options, inputs.model))
    planned = distributed.checked(lambda: lens_plans(options, inputs, mesh, skipped))
    shards = shard_plan(options.lenses, inputs.features, options.shard_size, skipped)
    run = distributed.checked(
        lambda: (
            RunDir.open(options.out, _manifest(job, argv, inputs, _plan(options, inputs, planned.first), skipped))
            if writer
            else None
        )
    )
    if writer:  # one line per skipped pair, --quiet or not: it says what the output lacks
        for s in skipped:
            print(s.note(), file=sys.stderr)
    try:
        state = distributed.share(_start_session(run, shards, inputs, mesh) if run else None)
        stored, todo = state["plan"], set(state["remaining"])
        plans = planned.map(lambda plan: with_stored_plan(plan, stored, quiet))

        t = time.perf_counter()
        todo_lenses = {s.lens for s in shards if s.name in todo}
        operators = _operators(run, plans.full, todo_lenses) if todo and plans.full is not None else None
        timings["operators"] = time.perf_counter() - t

        t = time.perf_counter()
        before_publish = _slow_shards()
        groups: dict[tuple[str, int], list[Shard]] = {}
        for shard in shards:
            groups.setdefault((shard.lens, shard.dictionary_index), []).append(shard)
        reading = plans.map(lambda plan: replace(plan, execution=replace(plan.execution, quiet=True)))
        for (lens, index), group in groups.items():
            left = [s for s in group if s.name in todo]
            if not left:
                continue
            dictionary = inputs.dictionaries[index]
            desc = f"readout {lens} L{dictionary.layer} {dictionary.name}"
            for shard in progress(
                left, desc=desc, quiet=quiet, unit="shard", total=len(group), initial=len(group) - len(left)
            ):
                self_check = options.execution.self_check and shard.chunk == 0
                rows = _compute_shard(inputs, reading, operators, shard, stored["shard_width"], self_check)
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
        f"qlens: {n_rows} signatures ({n_features} features x {len(options.lenses)} lenses, "
        f"{len(inputs.dictionaries)} dictionaries) -> {run.signatures} in {_duration(timings['total'])}{processes} "
        f"(inputs {_duration(timings['inputs'])}, operators {_duration(timings['operators'])}, "
        f"readout {_duration(timings['readout'])}){resumed}",
        file=sys.stdout,
    )
    return 0
