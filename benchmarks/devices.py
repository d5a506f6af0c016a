"""Throughput versus number of devices: the same job on meshes of 1 to 8 devices.

Each mesh shape (`DATAxFEATURE`) runs in its own process. On CPU the devices are simulated
(`--xla_force_host_platform_device_count=N`): they share the machine's cores, so this shows
that the work is partitioned and what the partitioning costs, not a speed-up (a 2-core
machine cannot go faster than 2 devices' worth). With `--real` the job uses the machine's
own accelerators (e.g. 8 GPUs of one node, or a TPU slice), meshes up to their number.

Per mesh: the two dense sweeps (`transport_operators(..., mesh=mesh)`, tokens per second)
and the readout of every feature of a synthetic SAE (`read_signatures` of a plan on the mesh, features
per second), each timed on a second call after a compiling first call. Every mesh's top-k ids
must equal the 1-device run's (up to swaps of features whose scores differ by less than 1e-5
of the scale: the token chunks are summed in another order), and the operators' and readout's shardings are recorded (the
basis axis is split over `feature`; readout rows over all devices).

    python -m benchmarks.devices                         # tiny model, simulated CPU devices (~3 min)
    python -m benchmarks.devices --size small
    python -m benchmarks.devices --real --meshes 1x1 2x1 4x1 8x1 4x2

Results: `benchmarks/results/devices-<size>-<device>.json` and `.png`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchmarks import builders, common, machine, sizes

SIZES = {
    "tiny": dict(hf=sizes.GPT2_TINY, features=16384, layer=2, batch=16, seq=32),
    "small": dict(
        hf=dict(n_embd=256, n_layer=6, n_head=4, vocab_size=8192, n_positions=256),
        features=65536,
        layer=3,
        batch=16,
        seq=64,
    ),
}
MESHES = ["1x1", "2x1", "1x2", "4x1", "2x2", "8x1", "4x2", "2x4"]


def _shape(text: str) -> tuple[int, int]:
    data, feature = text.lower().split("x")
    return int(data), int(feature)


def worker(size: str, mesh: str, seed: int, budget: float) -> dict:
    """One mesh: time the sweeps and the readout (runs in a process with the right devices)."""
    import jax
    import numpy as np

    from qlens_jax import ExecutionOptions, plan_request, read_signatures, sharding, transport_operators

    cfg = SIZES[size]
    data, feature = _shape(mesh)
    if jax.device_count() != data * feature:
        raise SystemExit(f"mesh {mesh} needs {data * feature} devices, this process has {jax.device_count()}")
    the_mesh = sharding.make_mesh((data, feature))
    model = builders.jax_model(builders.hf_gpt2(cfg["hf"], seed))
    tokens, mask = builders.token_sample(model.config.vocab_size, cfg["batch"], cfg["seq"], seed)
    dictionary = builders.synthetic_dictionary(model.config.d_model, cfg["features"], cfg["layer"], seed)
    run_sweeps = lambda: transport_operators(
        model, tokens, mask, sweeps=("value", "key"), mesh=the_mesh, memory_budget_gb=budget
    )
    _, sweeps_first = machine.timed(run_sweeps)
    operators, sweeps_s = machine.timed(run_sweeps)
    plan = plan_request(
        model,
        dictionary,
        tokens,
        mask,
        execution=ExecutionOptions(path="dense", mesh=the_mesh, self_check=False, memory_budget_gb=float(budget)),
    )
    run_readout = lambda: read_signatures(plan, operators)  # noqa: E731  (the readout stage alone)
    _, readout_first = machine.timed(run_readout)
    signatures, readout_s = machine.timed(run_readout)
    n_tokens, n_features = int(mask.sum()), cfg["features"] * len(signatures)
    return {
        "mesh": mesh,
        "devices": data * feature,
        "data": data,
        "feature": feature,
        "sweeps_seconds": sweeps_s,
        "sweeps_first_call_seconds": sweeps_first,
        "sweep_tokens_per_s": n_tokens / sweeps_s,
        "readout_seconds": readout_s,
        "readout_first_call_seconds": readout_first,
        "readout_features_per_s": n_features / readout_s,
        "operators_sharding": str(operators.value.sharding.spec),
        "operators_devices": len(operators.value.sharding.device_set),
        "operator_shard_shape": list(operators.value.addressable_shards[0].data.shape),
        "top": {t.lens: [np.asarray(t.top_ids).tolist(), np.asarray(t.top_scores).tolist()] for t in signatures},
    }


def same_up_to_ties(ids, scores, base_ids, base_scores, rtol: float = 1e-5) -> bool:
    """Top-k lists equal, except that features whose baseline scores differ by less than `rtol`
    of the score scale may swap (summing token chunks on other devices changes float rounding)."""
    import numpy as np

    ids, scores, base_ids, base_scores = map(np.asarray, (ids, scores, base_ids, base_scores))
    tol = rtol * np.abs(base_scores).max()
    if np.abs(scores - base_scores).max() > tol:
        return False
    for row, pos in zip(*np.nonzero(ids != base_ids)):
        where = np.flatnonzero(base_ids[row] == ids[row, pos])
        partner = base_scores[row, where[0]] if len(where) else scores[row, pos]
        if abs(partner - base_scores[row, pos]) > tol:
            return False
    return True


def _run_mesh(args, mesh: str) -> dict:
    data, feature = _shape(mesh)
    env = dict(os.environ)
    if not args.real:
        env["JAX_PLATFORMS"] = "cpu"
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={data * feature}"
        ).strip()
    request = json.dumps(dict(size=args.size, mesh=mesh, seed=args.seed, budget=args.memory_budget_gb))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.devices", "--worker", request],
        env=env,
        capture_output=True,
        text=True,
        cwd=common.REPO,
    )
    if done.returncode:
        raise RuntimeError(f"mesh {mesh} failed:\n{done.stderr[-4000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["loadavg_after"] = machine.loadavg()
    return result


def _plot(results: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in (
        (axes[0], "sweep_tokens_per_s", "sweeps (tokens/s)"),
        (axes[1], "readout_features_per_s", "readout (features/s)"),
    ):
        for feature in sorted({r["feature"] for r in results}):
            points = sorted((r["devices"], r[key]) for r in results if r["feature"] == feature)
            ax.plot(*zip(*points), "o-", label=f"feature axis = {feature}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("devices")
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--meshes", nargs="+", default=MESHES, metavar="DATAxFEATURE", help="mesh shapes to run")
    parser.add_argument(
        "--real", action="store_true", help="use this machine's own devices instead of simulated CPU devices"
    )
    parser.add_argument("--memory-budget-gb", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/devices-<size>-<device>.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        import qlens_jax  # noqa: F401  (XLA flags before JAX starts)

        print(json.dumps(worker(**json.loads(args.worker))))
        return 0

    info = machine.machine_info()
    common.log(
        f"devices {args.size}: meshes {args.meshes} ({'real' if args.real else 'simulated CPU'} devices); load {machine.loadavg()}"
    )
    results = []
    for mesh in args.meshes:
        result = _run_mesh(args, mesh)
        results.append(result)
        common.log(
            f"mesh {mesh}: sweeps {result['sweeps_seconds']:.2f} s ({result['sweep_tokens_per_s']:.1f} tokens/s), "
            f"readout {result['readout_seconds']:.2f} s ({result['readout_features_per_s']:.0f} features/s), "
            f"operators {result['operators_sharding']} over {result['operators_devices']} devices"
        )
    baseline = next(r for r in results if r["devices"] == 1) if any(r["devices"] == 1 for r in results) else results[0]
    for r in results:
        r["same_top_ids_as_baseline"] = all(
            same_up_to_ties(*r["top"][lens], *baseline["top"][lens]) for lens in baseline["top"]
        )
        r["identical_top_ids"] = all(r["top"][lens][0] == baseline["top"][lens][0] for lens in baseline["top"])
        r["sweep_speedup"] = r["sweep_tokens_per_s"] / baseline["sweep_tokens_per_s"]
        r["readout_speedup"] = r["readout_features_per_s"] / baseline["readout_features_per_s"]
    out = {
        "benchmark": "devices",
        "size": args.size,
        "machine": info,
        "real_devices": args.real,
        "config": {k: v for k, v in SIZES[args.size].items() if k != "hf"} | {"hf": SIZES[args.size]["hf"]},
        "results": [{k: v for k, v in r.items() if k != "top"} for r in results],
        "all_equal": all(r["same_top_ids_as_baseline"] for r in results),
        "loadavg_at_end": machine.loadavg(),
    }
    path = common.write_json(args.out or common.RESULTS / f"devices-{args.size}-{machine.device_slug()}.json", out)
    _plot(results, path.with_suffix(".png"))
    print(
        f"{'mesh':>6} {'devices':>7} {'sweeps s':>9} {'tokens/s':>9} {'x':>5} {'readout s':>9} {'features/s':>11} {'x':>5} same ids"
    )
    for r in results:
        print(
            f"{r['mesh']:>6} {r['devices']:>7} {r['sweeps_seconds']:>9.2f} {r['sweep_tokens_per_s']:>9.1f} {r['sweep_speedup']:>5.2f} "
            f"{r['readout_seconds']:>9.2f} {r['readout_features_per_s']:>11.0f} {r['readout_speedup']:>5.2f} {r['same_top_ids_as_baseline']}"
        )
    print(
        f"top-k ids equal (up to swaps of equal scores) on every mesh: {out['all_equal']}; wrote {path} and {path.with_suffix('.png')}"
    )
    return 0 if out["all_equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
