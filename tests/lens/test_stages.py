"""The kernel's API in stages: grouped options, `plan_request`, `transport_operators_for`,
`read_signatures`, and `query_lens` as their composition."""

import numpy as np
import pytest

import qlens_jax
from kernel_fixtures import FEATURES, setup
from qlens_jax import ExecutionOptions, LensOptions
from qlens_jax.lens import LensRequestError

K = 6
LENSES = ("query_lens_value", "query_lens_key", "first_order_value", "logit_lens_key")


@pytest.fixture(scope="module")
def gpt2():
    return setup("gpt2")


def _same(tables_a, tables_b):
    assert [(t.lens, t.dictionary, t.layer) for t in tables_a] == [(t.lens, t.dictionary, t.layer) for t in tables_b]
    for a, b in zip(tables_a, tables_b):
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
        np.testing.assert_array_equal(a.top_ids, b.top_ids)
        np.testing.assert_array_equal(a.top_scores, b.top_scores)
        np.testing.assert_array_equal(a.bottom_ids, b.bottom_ids)


def test_stages_compose_to_query_lens(gpt2):
    _, model, dictionaries, tokens, mask = gpt2
    options = LensOptions(k=K)
    execution = ExecutionOptions(path="dense", sequences_per_chunk=2)
    plan = qlens_jax.plan_request(
        model, dictionaries, tokens, mask, lenses=LENSES, features=FEATURES, options=options, execution=execution
    )
    assert plan.path == "dense" and plan.sweeps == ("first_order", "key", "value")
    operators = qlens_jax.transport_operators_for(plan)
    staged = qlens_jax.read_signatures(plan, operators)
    front = qlens_jax.query_lens(
        model, dictionaries, tokens, mask, lenses=LENSES, features=FEATURES, options=options, execution=execution
    )
    shorthand = qlens_jax.query_lens(
        model, dictionaries, tokens, mask, lenses=LENSES, features=FEATURES, k=K, path="dense", sequences_per_chunk=2
    )
    _same(staged, front)
    _same(staged, shorthand)

    # A selected part of the plan reads the same rows as the whole (to float rounding: the
    # readout GEMM has another shape).
    part = plan.select(lenses=("query_lens_key",), features={2: np.asarray([FEATURES[1]])})
    (table,) = qlens_jax.read_signatures(part, operators)
    whole = staged.get("query_lens_key", dictionaries[2].name)
    np.testing.assert_array_equal(table.top_ids[0], whole.top_ids[1])
    np.testing.assert_allclose(table.top_scores[0], whole.top_scores[1], rtol=1e-6)


def test_logit_lens_needs_no_operators(gpt2):
    _, model, dictionaries, tokens, mask = gpt2
    plan = qlens_jax.plan_request(
        model,
        dictionaries[:1],
        tokens,
        mask,
        lenses=("logit_lens_value",),
        features=FEATURES,
        execution=ExecutionOptions(path="dense"),
    )
    assert qlens_jax.transport_operators_for(plan) is None
    assert len(qlens_jax.read_signatures(plan)) == 1


def test_dense_read_without_operators_is_refused(gpt2):
    _, model, dictionaries, tokens, mask = gpt2
    plan = qlens_jax.plan_request(
        model,
        dictionaries[:1],
        tokens,
        mask,
        lenses=("query_lens_value",),
        features=FEATURES,
        execution=ExecutionOptions(path="dense"),
    )
    with pytest.raises(LensRequestError, match="needs operators"):
        qlens_jax.read_signatures(plan, None)


def test_auto_path_follows_feature_count(gpt2):
    _, model, dictionaries, tokens, mask = gpt2
    few = qlens_jax.plan_request(model, dictionaries[:1], tokens, mask, features=FEATURES)
    assert few.path == "per-feature"
    with_operators = qlens_jax.plan_request(
        model, dictionaries[:1], tokens, mask, features=FEATURES, have_operators=True
    )
    assert with_operators.path == "dense"


@pytest.mark.parametrize(
    "options, execution, message",
    [
        (LensOptions(k=0), ExecutionOptions(), "k=0"),
        (LensOptions(k=True), ExecutionOptions(), "k=True"),
        (LensOptions(dtype="float16"), ExecutionOptions(), "dtype 'float16'"),
        (LensOptions(precision="float64"), ExecutionOptions(), "precision 'float64'"),
        (LensOptions(), ExecutionOptions(path="fast"), "path 'fast'"),
        (LensOptions(), ExecutionOptions(shard_weights=True), "shard_weights=True needs a mesh"),
        (LensOptions(), ExecutionOptions(memory_budget_gb=0.0), "memory_budget_gb=0.0"),
        (LensOptions(), ExecutionOptions(tangent_chunk=0), "tangent_chunk=0"),
        (LensOptions(), ExecutionOptions(self_check_features=0), "self_check_features=0"),
    ],
)
def test_bad_options_are_named(gpt2, options, execution, message):
    _, model, dictionaries, tokens, mask = gpt2
    with pytest.raises(LensRequestError, match=message):
        qlens_jax.plan_request(model, dictionaries, tokens, mask, options=options, execution=execution)


def test_unknown_shorthand_is_a_type_error(gpt2):
    _, model, dictionaries, tokens, mask = gpt2
    with pytest.raises(TypeError, match="unknown option.*'top_k'"):
        qlens_jax.query_lens(model, dictionaries, tokens, mask, top_k=5)


def test_select_refuses_lenses_outside_the_plan(gpt2):
    _, model, dictionaries, tokens, mask = gpt2
    plan = qlens_jax.plan_request(
        model, dictionaries[:1], tokens, mask, lenses=("logit_lens_value",), features=FEATURES
    )
    with pytest.raises(LensRequestError, match="not part of this plan"):
        plan.select(lenses=("query_lens_key",))
