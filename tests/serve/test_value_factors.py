"""The value-side reverse lookup factored through the final norm's per-feature statistics equals
the forward readout (`value_scores` of the transported vectors), column by column, for every
final norm: GPT-2's LayerNorm (with and without its bias), Llama's and Qwen's RMSNorm, Gemma-3's
`(1 + w)` RMSNorm with soft-capping; and the statistics cache follows the operators and the
dictionary."""

import shutil

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import converters
from qlens_jax.lens import load_operators, save_operators
from qlens_jax.readout import value_scores
from qlens_jax.readout.scores import transported
from qlens_jax.serve import ReverseLookup
from qlens_jax.serve.norm_cache import FOLDER, statistics_path
from qlens_jax.serve.value_factors import factored_value_scores, norm_statistics, value_factors
from tiny_models import build_hf_model

CASES = [  # (architecture, remove_final_norm_bias, final norm kind, offset, soft-capped)
    ("gpt2", False, "layernorm", 0.0, False),
    ("gpt2", True, "layernorm", 0.0, False),
    ("llama-gqa2-llama3rope", False, "rmsnorm", 0.0, False),
    ("qwen3-gqa4-tied", False, "rmsnorm", 0.0, False),
    ("gemma3-softcap", False, "rmsnorm", 1.0, True),
]


def _operator_and_rows(d: int, n: int, seed: int):
    rng = np.random.default_rng(seed)
    op = np.eye(d, dtype=np.float32) + rng.standard_normal((d, d), dtype=np.float32) / np.sqrt(d)
    # rows with a common offset, so the transported vectors have means far from 0 (LayerNorm's mu matters)
    rows = rng.standard_normal((n, d), dtype=np.float32) + rng.standard_normal(d, dtype=np.float32)
    return jnp.asarray(op), jnp.asarray(rows)


@pytest.mark.parametrize(("name", "remove_bias", "kind", "offset", "capped"), CASES)
def test_factored_scores_are_the_columns_of_value_scores(name, remove_bias, kind, offset, capped):
    model = converters.load_model(build_hf_model(name))
    norm = model.final_norm
    assert (norm.kind, norm.offset, model.config.final_logit_softcap is not None) == (kind, offset, capped)
    if kind == "layernorm":
        assert norm.bias is not None and float(jnp.abs(norm.bias).max()) > 0.05  # the bias term is exercised
    op, rows = _operator_and_rows(model.config.d_model, 40, seed=len(name))
    full = np.asarray(value_scores(model, transported(op, rows), remove_bias))  # [n, vocab], the forward readout
    stats = norm_statistics(norm, transported(op, rows))
    scale = np.abs(full).max()
    for token in range(model.config.vocab_size):
        factored = np.asarray(factored_value_scores(value_factors(model, op, token, remove_bias), stats, rows))
        np.testing.assert_allclose(
            factored, full[:, token], rtol=0, atol=1e-6 * scale, err_msg=f"{name}, token {token}"
        )


def test_the_bias_and_the_mean_change_the_scores():
    """Dropping `<beta, w_t>` or `mu_i` would be caught: each moves the scores well above the tolerance."""
    model = converters.load_model(build_hf_model("gpt2"))
    op, rows = _operator_and_rows(model.config.d_model, 40, seed=1)
    stats = norm_statistics(model.final_norm, transported(op, rows))
    factors = value_factors(model, op, 5)
    scores = np.asarray(factored_value_scores(factors, stats, rows))
    no_bias = np.asarray(factored_value_scores(value_factors(model, op, 5, True), stats, rows))
    no_mean = np.asarray(factored_value_scores(factors, stats.at[:, 0].set(0.0), rows))
    scale = np.abs(scores).max()
    assert np.abs(scores - no_bias).min() > 1e-3 * scale
    assert np.abs(scores - no_mean).max() > 1e-3 * scale


def test_statistics_path_follows_operator_dictionary_and_norm(tmp_path):
    model = converters.load_model(build_hf_model("gpt2"))
    norm = model.final_norm
    op = np.asarray(_operator_and_rows(model.config.d_model, 1, seed=0)[0])
    path = statistics_path(tmp_path / "dict-a", op, norm, "float32")
    assert path == statistics_path(tmp_path / "dict-a", op.copy(), norm, "float32")
    other_op = op.copy()
    other_op[3, 4] += 1e-6
    assert path.parent == tmp_path / "dict-a" / FOLDER
    assert (
        len(
            {
                path,
                statistics_path(tmp_path / "dict-b", op, norm, "float32"),
                statistics_path(tmp_path / "dict-a", other_op, norm, "float32"),
                statistics_path(tmp_path / "dict-a", op, norm, "bfloat16"),
                statistics_path(
                    tmp_path / "dict-a",
                    op,
                    converters.load_model(build_hf_model("llama-gqa2-llama3rope")).final_norm,
                    "float32",
                ),
            }
        )
        == 5
    )


def test_statistics_are_cached_on_disk_and_follow_the_operators(serve_run, row_cache, tmp_path):
    """The first lookup writes the statistics beside the dictionary's rows (not into DIR); a new
    process reuses them; a run with other operators gets its own file, and its scores are its own
    operators' forward readout, not the first run's."""
    run_dir = serve_run[0]
    lookup = ReverseLookup(run_dir)
    entry = lookup.run.dictionaries[0]
    stats = lookup.norm_statistics(entry)
    written = lookup.statistics_path(entry)
    assert written.parent == lookup.rows(entry).value.path.parent / FOLDER
    assert row_cache in written.parents and run_dir not in written.parents
    np.testing.assert_array_equal(np.load(written), stats)
    mtime = written.stat().st_mtime_ns
    np.testing.assert_array_equal(ReverseLookup(run_dir).norm_statistics(entry), stats)
    assert written.stat().st_mtime_ns == mtime  # read back, not computed again

    other = tmp_path / "other-operators"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("operators"))
    operators = load_operators(run_dir / "operators")
    noise = jnp.asarray(np.random.default_rng(0).standard_normal(operators.value.shape), operators.value.dtype)
    save_operators(eqx.tree_at(lambda o: o.value, operators, operators.value * (1 + 0.2 * noise)), other / "operators")
    moved = ReverseLookup(other)
    assert moved.statistics_path(entry) != written and written.is_file()
    other_stats = moved.norm_statistics(entry)
    assert np.abs(other_stats - stats).max() > 1e-3 * np.abs(stats).max()
    op = moved.operator(entry, "value")
    rows = jnp.asarray(moved.rows(entry).value.read(0, entry.d_sae))
    full = np.asarray(value_scores(moved.model, transported(op, rows), moved.remove_final_norm_bias))
    for token in (0, 17, moved.model.config.vocab_size - 1):
        np.testing.assert_allclose(
            moved.scores(entry, "value", token), full[:, token], rtol=0, atol=1e-6 * np.abs(full).max()
        )
