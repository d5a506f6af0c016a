"""The readout's last guard: any NaN or infinity in a row of scores shows in that row's top-k or
bottom-k list (`lax.top_k` ranks NaN above +inf; the bottom list is the top of the negated
row), so checking the fetched lists finds every non-finite score, naming the feature."""

import jax
import numpy as np
import pytest

from qlens_jax.errors import InputError, NonFiniteScoreError
from qlens_jax.readout import check_finite_scores, top_and_bottom
from qlens_jax.readout.finite import first_non_finite

NEGATIVE_NAN = np.float32(-np.float32(np.nan))


@pytest.mark.parametrize("bad", [np.nan, NEGATIVE_NAN, np.inf, -np.inf], ids=["nan", "-nan", "inf", "-inf"])
@pytest.mark.parametrize("vocab", [100, 1000])  # the whole-row top-k, and the two-stage one
def test_every_non_finite_score_reaches_the_lists(bad, vocab):
    scores = np.random.default_rng(0).standard_normal((6, vocab)).astype(np.float32)
    top_and_bottom_2 = jax.jit(top_and_bottom, static_argnums=1)
    lists = {name: np.asarray(a) for name, a in top_and_bottom_2(scores, 2)._asdict().items()}
    assert first_non_finite(lists) is None
    for row, column in ((0, 0), (3, vocab // 2), (5, vocab - 1)):
        poisoned = scores.copy()
        poisoned[row, column] = bad
        lists = {name: np.asarray(a) for name, a in top_and_bottom_2(poisoned, 2)._asdict().items()}
        found = first_non_finite(lists)
        assert found is not None and found[0] == row, (row, column, found)


def test_the_error_names_lens_dictionary_and_feature():
    top = np.zeros((3, 2), np.float32)
    energy = np.ones((3, 4), np.float32)
    energy[2, 1] = np.nan
    check_finite_scores({"top_scores": top}, [7, 8, 9], lens="query_lens_key", side="key", dictionary="d", layer=1)
    with pytest.raises(
        NonFiniteScoreError,
        match=r"^first_order_value of dictionary 'd' \(layer 1\), feature 9: .*"
        r"layer_energy holds nan.*W_dec row",
    ) as err:
        check_finite_scores(
            {"top_scores": top, "layer_energy": energy},
            [7, 8, 9],
            lens="first_order_value",
            side="value",
            dictionary="d",
            layer=1,
        )
    assert isinstance(err.value, InputError)  # bad input: exit code 2 in the CLI
