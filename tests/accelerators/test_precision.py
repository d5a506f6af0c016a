"""The precision policy (`qlens_jax.numerics`) reaches every dot of every compiled step.

The float32 tests run an entry point end to end, dump every StableHLO module JAX lowers
meanwhile, and check the precision config (`HIGHEST`) of every `dot_general` in it, and that
the modules expected to hold dots are there. The GPU-only modes cannot compile on CPU (XLA's
CPU backend ignores the bfloat16 algorithm in some dots and rejects it in others; numerics
refuses both modes there), so their tests lower the compiled steps for CUDA without compiling
and check the dot algorithm (`TF32_TF32_F32`, `BF16_BF16_F32`) of every dot.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import converters
import qlens_jax
from dumps import dots_by_module, dumped_modules, off_policy
from kernel_fixtures import dictionary_set
from qlens_jax import numerics, sharding
from qlens_jax.baselines import TunedLens, baseline_signatures
from qlens_jax.channels import channel_data, fit_channels, module_responses, subspace_channels, train_low_rank
from qlens_jax.evaluation.run import evaluate
from qlens_jax.lens import operators
from qlens_jax.lens.options import LensOptions
from qlens_jax.readout import ReadoutContext
from qlens_jax.readout.programs import first_order_chunks, readout_chunks
from tiny_models import build_hf_model, padded_batch

MODES = ["float32"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny():
    model = converters.load_model(build_hf_model("gpt2", seed=0))
    # Shapes no other test uses: nothing compiled earlier could be reused (caches are cleared too).
    tokens, mask = padded_batch(model.config.vocab_size, batch=3, seq=9, seed=0)
    return model, dictionary_set(model.config.d_model, model.config.n_layers), tokens, mask


def _check(directory: Path, mode: str, expected_modules: tuple[str, ...]) -> dict:
    dots = dots_by_module(directory)
    assert off_policy(dots, mode) == []
    names = " ".join(dots)
    missing = [kind for kind in expected_modules if kind not in names]
    assert not missing, f"no dumped module with dots for {missing}; modules: {sorted(dots)}"
    return dots


@pytest.mark.parametrize("mode", MODES)
def test_every_dot_of_query_lens_follows_the_policy(tiny, tmp_path, monkeypatch, mode):
    model, dictionaries, tokens, mask = tiny
    with dumped_modules(tmp_path):
        for path in ("dense", "per-feature"):
            qlens_jax.query_lens(
                model,
                dictionaries,
                tokens,
                mask,
                lenses=qlens_jax.LENSES,
                features=[0, 5, 7, 9, 11],
                k=5,
                path=path,
                precision=mode,
            )
    dots = _check(
        tmp_path,
        mode,
        (
            "jit_sweep_step",  # the sharded sweeps (block-major value+key, first order)
            "jit_readout_chunks",
            "jit_first_order_chunks",
            "jit_value_chunk",
            "jit_key_chunk",
            "jit_first_order_value_chunk",
            "jit_first_order_key_chunk",  # per-feature path
        ),
    )
    assert sum("jit_sweep_step" in name for name in dots) >= 2


@pytest.mark.parametrize("mode", MODES)
def test_every_dot_of_the_baselines_follows_the_policy(tiny, tmp_path, monkeypatch, mode):
    model, dictionaries, tokens, mask = tiny
    translators = TunedLens.identity(model.config.n_layers, model.config.d_model)
    with dumped_modules(tmp_path):
        baseline_signatures(
            model,
            dictionaries[:1],
            tokens,
            mask,
            lenses=("zero_out", "token_change_5", "tuned_lens"),
            features=[1, 2, 3],
            options=LensOptions(k=5, precision=mode),
            translators=translators,
        )
    dots = _check(tmp_path, mode, ("jit_readout_chunks",))
    assert len(dots) >= 3


@pytest.mark.parametrize("mode", MODES)
def test_every_dot_of_a_channels_fit_follows_the_policy(tiny, tmp_path, monkeypatch, mode):
    model, dictionaries, tokens, mask = tiny
    with dumped_modules(tmp_path):
        data = channel_data(model, dictionaries[:1], tokens, mask, n_features=12, precision=mode)
        rng = np.random.default_rng(0)
        X, Y = rng.normal(size=(12, 6)), rng.normal(size=(12, 5))
        train_low_rank(X[:9], Y[:9], X[9:], Y[9:], 2, epochs=3, precision=mode)
    assert data.responses
    _check(tmp_path, mode, ("jit_sweep_step", "jit__apply", "jit__train"))


@pytest.mark.parametrize("mode", ["tf32", "bfloat16"])
def test_gpu_modes_reach_every_dot_of_the_sweep_and_readout_steps(tiny, mode):
    model, _, tokens, mask = tiny
    mesh = sharding.make_mesh()
    basis = sharding.put(np.arange(model.config.d_model), mesh, "basis")
    n_layers = model.config.n_layers
    tokens, mask = jnp.asarray(tokens), jnp.asarray(mask)
    context = ReadoutContext(
        model=model, key_matrix=model.W_E.astype(jnp.float32), remove_final_norm_bias=False, k=5, feature_chunk=4
    )
    chunks = jnp.ones((1, 4, model.config.d_model), jnp.float32)
    op = jnp.eye(model.config.d_model, dtype=jnp.float32)
    terms = jnp.ones((3, model.config.d_model, model.config.d_model), jnp.float32)
    steps = {
        "block-major sweeps": (
            operators.sharded_sweep("value+key", mesh, 4, False, False, (0, n_layers)),
            (model, tokens, mask, basis),
        ),
        "basis-major value sweep": (operators.sharded_sweep("value", mesh, 4), (model, tokens, mask, basis)),
        "first-order sweep": (operators.sharded_sweep("first_order", mesh, 4), (model, tokens, mask, basis)),
        "value readout": (
            jax.jit(lambda c: readout_chunks(context.score_fn("value", op), c, 5, context.layout)),
            (chunks,),
        ),
        "key readout": (
            jax.jit(lambda c: readout_chunks(context.score_fn("key", op), c, 5, context.layout)),
            (chunks,),
        ),
        "first-order readout": (
            jax.jit(lambda c: first_order_chunks(context.score_fn("value"), terms, c, 5, context.layout)),
            (chunks,),
        ),
    }
    for name, (step, args) in steps.items():
        with numerics.matmul_precision(mode, backend="gpu"):
            text = step.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
        dots = {name: [line.strip() for line in text.splitlines() if "stablehlo.dot" in line]}
        assert dots[name], name
        assert off_policy(dots, mode) == [], name


def test_an_unset_policy_is_visible_to_the_check(tmp_path):
    """Control: a dot traced outside any policy carries the backend default, and the check says so."""
    x = jnp.ones((5, 7), jnp.float32)
    with dumped_modules(tmp_path):
        jax.jit(lambda a: a @ a.T * 3.0)(x)
    dots = dots_by_module(tmp_path)
    assert dots and off_policy(dots, "float32") and off_policy(dots, "bfloat16")


@pytest.mark.parametrize("mode, backend", [("tf32", "cpu"), ("tf32", "tpu"), ("bfloat16", "cpu")])
def test_modes_a_backend_cannot_honour_are_refused_naming_it(mode, backend):
    with pytest.raises(numerics.PrecisionError, match=f"{mode}.*{backend}"):
        numerics.check_precision(mode, backend)


def test_tf32_on_cpu_is_refused_before_any_work(tiny, monkeypatch):
    model, dictionaries, tokens, mask = tiny

    def fail(*args, **kwargs):
        raise AssertionError("work started before the precision was checked")

    monkeypatch.setattr("qlens_jax.dictionaries.validate_dictionary", fail)
    assert jax.default_backend() == "cpu"
    with pytest.raises(numerics.PrecisionError, match="unavailable on the cpu backend"):
        qlens_jax.query_lens(model, dictionaries, tokens, mask, precision="tf32")
    with pytest.raises(ValueError, match="'float64'"):
        qlens_jax.query_lens(model, dictionaries, tokens, mask, precision="float64")


def test_float32_is_available_everywhere_and_nested_entries_inherit_the_mode(monkeypatch):
    for backend in ("cpu", "gpu", "tpu"):
        assert numerics.check_precision("float32", backend) == "float32"
    seen = []

    @numerics.applies_precision
    def inner(precision: str = "float32"):
        seen.append((numerics.active_precision(), jax.config.jax_default_matmul_precision))

    @numerics.applies_precision
    def outer(precision: str = "float32"):
        inner()
        inner(precision="float32")

    monkeypatch.setitem(numerics.BACKENDS, "bfloat16", None)
    outer(precision="bfloat16")  # refused on CPU: its dots are never compiled here
    inner()
    assert seen == [("bfloat16", "BF16_BF16_F32"), ("float32", "highest"), ("float32", "highest")]
    assert numerics.active_precision() is None


@pytest.mark.parametrize(
    "entry",
    [
        qlens_jax.transport_operators,
        evaluate,
        channel_data,
        fit_channels,
        subspace_channels,
        module_responses,
        train_low_rank,
        ReadoutContext.read,
        ReadoutContext.read_first_order,
    ],
)
def test_every_computing_entry_point_takes_a_precision(entry):
    """Defaults to float32, and is checked (so applied) before the body runs: the body would
    fail differently on the placeholder arguments."""
    parameters = inspect.signature(entry).parameters
    assert parameters["precision"].default == "float32"
    positional = [p for p in parameters.values() if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    with pytest.raises(numerics.PrecisionError, match="'float64'"):
        entry(*[None] * len(positional), precision="float64")


def test_baselines_take_their_precision_in_the_lens_options():
    """`baseline_signatures(..., options=LensOptions(precision=...))` refuses a precision the
    policy does not have before the body runs (the placeholder arguments would fail differently)."""
    from qlens_jax.lens.validation import LensRequestError
    from tiny_models import build_hf_model

    parameters = inspect.signature(baseline_signatures).parameters
    assert "precision" not in parameters and parameters["options"].default == qlens_jax.LensOptions()
    positional = [p for p in parameters.values() if p.default is p.empty and p.kind is p.POSITIONAL_OR_KEYWORD]
    model = converters.load_model(build_hf_model("gpt2", seed=0))
    arguments = [model, *[None] * (len(positional) - 1)]
    with pytest.raises((numerics.PrecisionError, LensRequestError), match="'float64'"):
        baseline_signatures(*arguments, options=qlens_jax.LensOptions(precision="float64"))


def test_query_lens_takes_its_precision_in_the_lens_options():
    """`query_lens(..., precision=...)` is a `LensOptions` field; `read_signatures` and
    `transport_operators_for` apply it (the dump tests above check the dots)."""
    assert qlens_jax.LensOptions().precision == "float32"
    assert qlens_jax.LensOptions(precision="tf32").precision == "tf32"


def test_no_code_passes_its_own_precision_to_a_product():
    """An explicit `precision=` on a product would override the policy (numerics is the one place)."""
    pattern = re.compile(r"Precision\.|precision\s*=\s*(jax|lax|_|\"|')|default_matmul_precision")
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted((ROOT / "qlens_jax").rglob("*.py"))
        if path.name != "numerics.py"
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_cast_model_changes_storage_not_metadata(tiny):
    model = tiny[0]
    cast = numerics.cast_model(model, "bfloat16")
    assert cast.embed_tokens.dtype == jnp.bfloat16
    assert jax.tree.leaves(cast.meta) and all(
        x.dtype == m.dtype for x, m in zip(jax.tree.leaves(cast.meta), jax.tree.leaves(model.meta))
    )
    with pytest.raises(numerics.PrecisionError, match="float16"):
        numerics.cast_model(model, "float16")
