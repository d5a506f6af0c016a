"""The dense sweeps update their operator sums in place and never wait on the device
(issue 16 item 2, docs/definitions.md sections 2 and 2b).

- Each token chunk's step takes its float32 accumulator donated: the lowered step marks it as
  aliased to the output, the compiled one keeps that alias, the runtime deletes the donated
  buffers, and no "donated buffers were not usable" warning is raised (warnings are errors).
- Nothing returns to the host inside a sweep. On GPUs and TPUs JAX's transfer guard would
  catch it; on a CPU device arrays live in host memory and the guard never fires, so the test
  also puts every weight behind a long device computation: a sweep that read anything back
  would wait for it, one that only dispatches returns while it still runs.
"""

import json
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernel_fixtures import setup
from qlens_jax import sharding
from qlens_jax.lens import operators, transport_operators

HERE = Path(__file__).resolve().parent
FIELDS = ("value", "key", "first_order", "first_order_all")


@pytest.fixture(scope="module")
def tiny():
    _, model, _, tokens, mask = setup("gpt2")
    return model, tokens, mask


def step_arguments(model, tokens, mask, mesh, name, with_input_norms):
    return (
        model,
        sharding.put(tokens[:2], mesh, "batch", None),
        sharding.put(mask[:2], mesh, "batch", None),
        sharding.put(np.arange(model.config.d_model), mesh, "basis"),
        operators.empty_sums(name, mesh, model.config, with_input_norms),
    )


def aliased_argument_types(stablehlo: str) -> list[str]:
    """The tensor types of the lowered module's arguments marked as aliased to an output."""
    signature = next(line for line in stablehlo.splitlines() if "func.func public @main" in line)
    arguments = re.split(r"%arg\d+: ", signature.split(") -> ")[0])[1:]
    return [argument.split(" ")[0].rstrip(",") for argument in arguments if "tf.aliasing_output" in argument]


def aliased_outputs(hlo: str) -> list[str]:
    """The output indices listed in a compiled HLO module's `input_output_alias`."""
    header = next(line for line in hlo.splitlines() if line.startswith("HloModule"))
    found = re.search(r"input_output_alias=\{(.*?)\s\}", header)
    return re.findall(r"\{(\d*)\}: \(\d+,", found.group(1)) if found else []


# Basis-major value, key and first-order sweeps; block-major value, key and both sides in one
# step (bounded, as a job restricted to some layers runs it).
STEPS = [
    ("value", None),
    ("key", None),
    ("first_order", None),
    ("value", (0, 3)),
    ("key", (0, 3)),
    ("value+key", (1, 2)),
]


@pytest.mark.parametrize("name, blocks", STEPS)
def test_each_step_adds_into_its_donated_accumulator(tiny, name, blocks):
    model, tokens, mask = tiny
    mesh = sharding.make_mesh()
    step = operators.sharded_sweep(name, mesh, 4, True, False, blocks)
    args = step_arguments(sharding.replicate(model, mesh), tokens, mask, mesh, name, True)
    totals = jax.tree.leaves(args[-1])
    lowered = step.lower(*args)
    types = [f"tensor<{'x'.join(map(str, t.shape))}xf32>" for t in totals]
    assert aliased_argument_types(lowered.as_text()) == types
    outputs = [""] if len(totals) == 1 else [str(i) for i in range(len(totals))]  # HLO's output indices
    assert sorted(aliased_outputs(lowered.compile().as_text())) == outputs

    sums = jax.tree.leaves(step(*args[:-1]))  # the same step without an accumulator
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        updated = jax.tree.leaves(step(*args))
    assert all(t.is_deleted() for t in totals)  # the donated buffers were taken, not copied
    # -0.0 is the identity of IEEE addition: the first step's sums bit for bit
    assert all(u.tobytes() == s.tobytes() for u, s in zip(map(np.asarray, updated), map(np.asarray, sums)))


def test_an_accumulator_unlike_the_sums_is_refused(tiny):
    model, tokens, mask = tiny
    mesh = sharding.make_mesh()
    step = operators.sharded_sweep("key", mesh, 4, True)
    args = step_arguments(sharding.replicate(model, mesh), tokens, mask, mesh, "key", False)  # no input-norm rows
    with pytest.raises(ValueError, match="accumulator .* does not match its sums"):
        step(*args)


@jax.jit
def behind_busy_device(model, n: int):
    """`model` with every float weight computed after `n` iterations of a 512 x 512 matrix
    loop (on this machine ~2 ms each), so that nothing computed from it is ready before."""
    a = jax.lax.fori_loop(0, n, lambda _, a: jnp.tanh(a @ a), jnp.full((512, 512), 1e-3))
    zero = a[0, 0] * 0
    return jax.tree.map(lambda w: w + zero.astype(w.dtype) if eqx.is_inexact_array(w) else w, model)


def returns_before_the_device_is_done(model, tokens, mask, **options) -> tuple[bool, object]:
    """Whether `transport_operators` returns while the computation its weights wait for still
    runs (it never waited on the device, nor tripped the transfer guard), and its operators
    once done."""
    behind_busy_device(model, 1)  # compiled beforehand
    gated = behind_busy_device(model, 1000)
    try:
        with jax.transfer_guard_device_to_host("disallow_explicit"):
            operators_ = transport_operators(gated, tokens, mask, **options)
            returned_first = not gated.embed_tokens.is_ready()
    except jax.errors.JaxRuntimeError as error:  # the guard, on GPUs and TPUs
        if "Disallowed" not in str(error):
            raise
        return False, None
    return returned_first, jax.block_until_ready(operators_)


@pytest.mark.parametrize("order", ["basis", "blockwise"])
def test_a_sweep_never_waits_on_the_device(tiny, order):
    model, tokens, mask = tiny
    options = dict(sweeps=("value", "key", "first_order"), sweep_order=order, sequences_per_chunk=1)
    expected = transport_operators(model, tokens, mask, **options)  # compiles every step
    returned_first, computed = returns_before_the_device_is_done(model, tokens, mask, **options)
    assert returned_first
    for field in FIELDS:
        np.testing.assert_array_equal(np.asarray(getattr(computed, field)), np.asarray(getattr(expected, field)))


def test_the_check_sees_a_sweep_that_reads_back(tiny, monkeypatch):
    """Control: a step whose results are read on the host (as a log line would) makes the
    sweep wait for the device, and the check above says so."""
    model, tokens, mask = tiny
    real = operators.sharded_sweep

    def reading(*args, **kwargs):
        step = real(*args, **kwargs)

        def logged(*step_args):
            out = step(*step_args)
            float(jax.tree.leaves(out)[0].sum())
            return out

        return logged

    options = dict(sweeps=("value",), sweep_order="basis", sequences_per_chunk=1)
    transport_operators(model, tokens, mask, **options)
    monkeypatch.setattr(operators, "sharded_sweep", reading)
    returned_first, _ = returns_before_the_device_is_done(model, tokens, mask, **options)
    assert not returned_first


@pytest.fixture(scope="module")
def on_a_mesh():
    """The worker's report: the same checks on a 2 x 2 mesh of simulated CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE.parent.parent), str(HERE.parent), str(HERE.parent / "lens")])
    command = [sys.executable, "-W", "error", str(HERE / "donation_worker.py")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize("placement", ["replicated", "sharded"])
def test_steps_on_a_mesh_update_their_accumulators_in_place(on_a_mesh, placement):
    for step in on_a_mesh[placement]:
        assert step["aliased_arguments"] == step["accumulator_types"], step
        assert step["aliased_outputs"] == step["outputs"], step
        assert step["deleted"] == [True] * step["outputs"], step
        assert step["bitwise_equal_to_sums"], step
