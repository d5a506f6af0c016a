"""Roofline accounting: the FLOPs of the compiled sweep and readout steps, split into attention
and MLP, and the fraction of the measured float32 matmul peak that the measured times achieve.

Two counts per step:

- `xla_flops`: `jax.jit(f).lower(...).compile().cost_analysis()["flops"]`. XLA's cost analysis
  counts the body of a loop (`lax.scan`, `lax.map`) ONCE, whatever its trip count, so for the
  sweeps (a scan over blocks, maps over tangents and positions) it is a lower bound; for a
  loop-free step it is the whole.
- `flops`: the step's jaxpr, walked with every loop body multiplied by its trip count (`scan`
  length; a `while` of unknown trip count is counted once and reported in
  `while_loops_counted_once`). Matrix products count 2 x M x N x K, other arithmetic one
  FLOP per output element. Each equation is attributed to attention, MLP or other by the
  innermost function of its source traceback that names one of them (`ATTENTION` / `MLP`);
  linearization and transposition keep the traceback of the primal equation, so the Jacobian
  products are attributed to the module they differentiate.

For a loop-free step the two counts must agree (tests check it at tiny size); the split
`attention + mlp + other` is the whole by construction, and `tests/benchmarks` checks that
attention and MLP carry nearly all of a sweep's FLOPs. The sweep steps are those
`transport_operators` runs for the benchmark's job: it is driven with the real planner and
each step it would run is recorded (and costed) instead of run.
"""

from __future__ import annotations

import math
from collections import Counter

from benchmarks import builders, sizes

ATTENTION = frozenset(
    {
        "attention_residual",
        "attention_z",
        "attention_output",
        "_attention_batch",
        "dot_product_attention",
        "apply_rope",
        "attention_mask",
        "softcap",
    }
)
MLP = frozenset({"mlp_residual", "mlp_input", "mlp_jacobian", "mlp_jacobians", "apply_rowwise"})
# Primitives that move or select data (no arithmetic).
FREE = frozenset(
    {
        "broadcast_in_dim",
        "reshape",
        "transpose",
        "squeeze",
        "expand_dims",
        "slice",
        "dynamic_slice",
        "dynamic_update_slice",
        "concatenate",
        "gather",
        "scatter",
        "select_n",
        "convert_element_type",
        "iota",
        "copy",
        "copy_p",
        "pad",
        "rev",
        "stop_gradient",
        "device_put",
        "sharding_constraint",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and",
        "or",
        "not",
        "argmax",
        "argmin",
        "sort",
        "top_k",
        "clamp",
        "pjit",
        "closed_call",
        "custom_jvp_call",
        "custom_vjp_call",
        "custom_vjp_call_jaxpr",
        "scan",
        "while",
        "cond",
        "remat",
        "checkpoint",
        "shard_map",
        "psum",
        "split",
        "random_bits",
        "random_wrap",
        "random_seed",
        "random_unwrap",
        "mul_add",
    }
)


def _size(aval) -> int:
    return int(math.prod(getattr(aval, "shape", ()) or ()))


def _dot_flops(eqn) -> int:
    lhs, rhs = (v.aval for v in eqn.invars[:2])
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = eqn.params["dimension_numbers"]
    rhs_free = [d for i, d in enumerate(rhs.shape) if i not in rhs_contract and i not in rhs_batch]
    return 2 * _size(lhs) * int(math.prod(rhs_free))


def _module_of(eqn) -> str:
    traceback = getattr(eqn.source_info, "traceback", None)
    for frame in traceback.frames if traceback is not None else ():
        # A nested function is named after the one it sits in: "apply_rowwise.<locals>.one_position".
        function = frame.function_name.split(".")[0]
        if function in ATTENTION:
            return "attention"
        if function in MLP:
            return "mlp"
    return "other"


def _sub_jaxprs(eqn):
    """(jaxpr, multiplier) of the equations nested in `eqn` (loops multiplied by trip count)."""
    import jax

    name = eqn.primitive.name
    found = []
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(item, jax.extend.core.ClosedJaxpr):
                found.append(item.jaxpr)
            elif isinstance(item, jax.extend.core.Jaxpr):
                found.append(item)
    if name == "scan":
        return [(j, eqn.params["length"]) for j in found], False
    if name == "cond":
        return [(j, 1) for j in found[:1]], False  # branches of equal cost here (`lax.cond` unused in the kernel)
    return [(j, 1) for j in found], name == "while"


def count_jaxpr(
    jaxpr, multiplier: int = 1, totals: Counter | None = None, flags: Counter | None = None
) -> tuple[Counter, Counter]:
    """FLOPs of `jaxpr` by module (`attention`, `mlp`, `other`), loop bodies times their trip counts."""
    totals = Counter() if totals is None else totals
    flags = Counter() if flags is None else flags
    for eqn in jaxpr.eqns:
        subs, is_while = _sub_jaxprs(eqn)
        if subs:
            flags["while_loops_counted_once"] += is_while
            for sub, times in subs:
                count_jaxpr(sub, multiplier * times, totals, flags)
            continue
        name = eqn.primitive.name
        if name == "dot_general":
            flops = _dot_flops(eqn)
        elif name in FREE:
            continue
        elif name.startswith("reduce_") or name in ("cumsum", "cumlogsumexp", "cummax"):
            flops = _size(eqn.invars[0].aval)
        else:
            flops = max((_size(v.aval) for v in eqn.outvars), default=0)
        totals[_module_of(eqn)] += multiplier * flops
    return totals, flags


def step_cost(fn, *args, xla: bool = True) -> dict:
    """Both counts for one call of the jitted `fn(*args)` (see the module docstring);
    `xla=False` skips the compilation (and XLA's count: None)."""
    import jax

    analysis = {"flops": None}
    if xla:
        analysis = fn.lower(*args).compile().cost_analysis()
        analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
    totals, flags = count_jaxpr(jax.make_jaxpr(fn)(*args).jaxpr)
    flops = sum(totals.values())
    return {
        "xla_flops": None if analysis.get("flops") is None else float(analysis["flops"]),
        "flops": float(flops),
        "split": {k: float(totals.get(k, 0.0)) for k in ("attention", "mlp", "other")},
        "while_loops_counted_once": int(flags["while_loops_counted_once"]),
    }


def record_sweep_steps(model, tokens, mask, xla: bool = True, **kwargs) -> list[dict]:
    """The steps `transport_operators(model, tokens, mask, **kwargs)` would run, costed, not run:
    the real planner picks them; each call of a step is answered with zeros of its output shape.
    `xla=False`: traced only, not compiled (cheap at any size)."""
    import jax
    import jax.numpy as jnp

    from qlens_jax.lens import operators

    real = operators.sharded_sweep
    seen: dict = {}
    calls = Counter()

    def recording(name, *a, **kw):
        fn = real(name, *a, **kw)

        def call(*args):
            key = (name, repr(a), repr(sorted(kw.items())), tuple(getattr(x, "shape", None) for x in args[1:]))
            if key not in seen:
                seen[key] = {
                    "name": name,
                    "blocks": repr(a[-1] if a else None),
                    "shapes": [list(getattr(x, "shape", ())) for x in args[1:]],
                    **step_cost(fn, *args, xla=xla),
                }
            calls[key] += 1
            return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, *args))

        return call

    operators.sharded_sweep = recording
    try:
        operators.transport_operators(model, tokens, mask, **kwargs)
    finally:
        operators.sharded_sweep = real
    return [dict(step, calls=calls[key]) for key, step in seen.items()]


def readout_step_cost(model, tokens, mask, side: str, rows: int) -> dict:
    """One readout step of `rows` features: transport (`rows x d @ d x d`), the side's scores
    against the whole vocabulary, top and bottom 25 (loop-free: both counts are the whole)."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    from qlens_jax.readout import centered_embeddings, dot_scores, top_k, value_scores

    d = model.config.d_model
    # the model (value side) or the centred embeddings (key side) are arguments, not constants
    weights = model if side == "value" else centered_embeddings(model, jnp.asarray(tokens), jnp.asarray(mask))

    params, static = eqx.partition(weights, eqx.is_array)

    def step(params, vectors, op):
        weights = eqx.combine(params, static)
        transported = vectors @ op.T
        scores = value_scores(weights, transported) if side == "value" else dot_scores(weights, transported)
        return top_k(scores, 25), top_k(scores, 25, negate=True)

    args = (jnp.zeros((rows, d), jnp.float32), jnp.zeros((d, d), jnp.float32))
    return step_cost(jax.jit(step), params, *args)


def account_throughput(cfg: dict, dense: dict, peak: float) -> dict:
    """FLOPs of the throughput benchmark's whole-dictionary sweep and of its readouts, and the
    fractions of `peak` (FLOP/s) that the measured times in `dense` achieve."""
    import qlens_jax  # noqa: F401  (XLA flags first)
    from qlens_jax.readout import feature_chunk_for

    hf = builders.hf_model(cfg["hf"], cfg["seed"])
    model = builders.jax_model(hf)
    del hf
    tokens, mask = builders.token_sample(model.config.vocab_size, cfg["batch"], cfg["seq"], cfg["seed"])
    n_layers = model.config.n_layers
    sides = tuple(
        s for s in ("value", "key") if any(name.startswith("query_lens") and name.endswith(s) for name in cfg["lenses"])
    )
    out = {"peak_flops_per_s": peak, "sweeps": {}, "readouts": {}}
    if sides:
        steps = record_sweep_steps(
            model,
            tokens,
            mask,
            sweeps=sides,
            memory_budget_gb=cfg["budget"],
            **builders.job_bounds(cfg.get("job_layers") or range(n_layers), n_layers),
        )
        total = sum(s["flops"] * s["calls"] for s in steps)
        split = {k: sum(s["split"][k] * s["calls"] for s in steps) for k in ("attention", "mlp", "other")}
        measured = sum(v["seconds"] for v in dense["sweeps"].values())
        out["sweeps"] = {
            "steps": steps,
            "flops": total,
            "split": split,
            "seconds": measured,
            "fraction_of_peak": total / measured / peak if measured and peak else None,
        }
    chunk = feature_chunk_for(model.config.vocab_size, 0.25 * cfg["budget"] * 2**30)
    rows = min(chunk, cfg["features"])
    n_steps = -(-cfg["features"] // rows)
    for key, readout in dense["readouts"].items():
        lens, _ = key.split("/")
        side = "key" if lens.endswith("key") else "value"
        step = readout_step_cost(model, tokens, mask, side, rows)
        flops = step["flops"] * n_steps
        out["readouts"][key] = {
            "step": step,
            "steps": n_steps,
            "rows_per_step": rows,
            "flops": flops,
            "seconds": readout["seconds"],
            "fraction_of_peak": flops / readout["seconds"] / peak if peak else None,
        }
    return out


def print_report(roofline: dict) -> None:
    peak = roofline["peak_flops_per_s"]
    print(
        f"roofline (float32 matmul peak measured in this run: {peak / 1e9:.1f} GFLOP/s; FLOPs from the compiled steps' "
        "jaxprs with loop trip counts, XLA's cost analysis beside them):"
    )
    sweeps = roofline.get("sweeps")
    if sweeps:
        s = sweeps["split"]
        print(
            f"  sweeps: {sweeps['flops']:.3g} FLOPs (attention {s['attention']:.3g}, MLP {s['mlp']:.3g}, other {s['other']:.3g}) "
            f"in {sweeps['seconds']:.1f} s = {sweeps['fraction_of_peak'] or float('nan'):.0%} of peak"
        )
        for step in sweeps["steps"]:
            print(
                f"    step {step['name']} x{step['calls']}: {step['flops']:.3g} FLOPs (XLA cost analysis, loop bodies once: "
                f"{step['xla_flops']:.3g})"
            )
    for key, r in roofline["readouts"].items():
        print(
            f"  readout {key}: {r['flops']:.3g} FLOPs ({r['steps']} steps of {r['rows_per_step']} features; XLA per step "
            f"{r['step']['xla_flops']:.3g}, counted {r['step']['flops']:.3g}) in {r['seconds']:.1f} s = "
            f"{r['fraction_of_peak'] or float('nan'):.0%} of peak"
        )


def job_flops(
    config, n_tokens: int, seq: int, value_blocks: int, key_blocks: int, readouts: int, n_features: int
) -> dict:
    """Useful multiply-adds x 2 of a job, by the block-major method's count (an estimate; XLA
    does more, e.g. norms and softmax, and block-major steps may differ in detail):
    per token and block, forming the MLP Jacobian `2 d^2 d_mlp` (x1.5 gated), and per basis
    vector (`d` of them) and side, applying it `2 d^2` plus the attention VJP (or its transpose)
    `2 x (8 d^2 + 4 seq d)`; per readout (one side of one layer), the transport `2 n d^2` and
    the vocabulary GEMM `2 n d vocab`."""
    d, ff = config.d_model, config.d_mlp * (1.5 if config.gated_mlp else 1.0)
    per_vector = 2 * d * d + 2 * (8 * d * d + 4 * seq * d)
    blocks_formed = max(value_blocks, key_blocks)
    sweep = n_tokens * (blocks_formed * 2 * d * d * ff + (value_blocks + key_blocks) * d * per_vector)
    readout = readouts * (2 * n_features * d * d + 2 * n_features * d * config.vocab_size)
    return {"sweep": float(sweep), "readout": float(readout)}


def count_sweeps(size: str, batch: int | None = None, seq: int | None = None) -> dict:
    """The whole-dictionary sweep of a throughput `--size`, traced and counted (not compiled,
    not run: seconds, at any size)."""

    spec = sizes.THROUGHPUT[size]
    model = builders.jax_model(builders.hf_model(spec["hf"], 0))
    tokens, mask = builders.token_sample(model.config.vocab_size, batch or spec["batch"], seq or spec["seq"], 0)
    n_layers = model.config.n_layers
    steps = record_sweep_steps(
        model,
        tokens,
        mask,
        xla=False,
        sweeps=("value", "key"),
        memory_budget_gb=spec["budget"],
        **builders.job_bounds(spec["job_layers"] or range(n_layers), n_layers),
    )
    split = {k: sum(s["split"][k] * s["calls"] for s in steps) for k in ("attention", "mlp", "other")}
    return {"size": size, "tokens": int(mask.sum()), "steps": steps, "flops": sum(split.values()), "split": split}


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="Count the FLOPs of a throughput size's two-sided sweep (no run).")
    parser.add_argument("--size", default="gpt2-small")
    parser.add_argument("--batch", type=int)
    parser.add_argument("--seq", type=int)
    args = parser.parse_args()
    result = count_sweeps(args.size, args.batch, args.seq)
    s = result["split"]
    print(
        f"{args.size}, {result['tokens']} tokens, both sides: {result['flops']:.4g} FLOPs "
        f"(attention {s['attention']:.3g}, MLP {s['mlp']:.3g}, other {s['other']:.3g})"
    )
    print(json.dumps([{k: v for k, v in step.items()} for step in result["steps"]], indent=1))
