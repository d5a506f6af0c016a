"""I(T) from the authors' feature pickles (`--activations`), against their own
`evaluation/input_score.py` on pickles written with their own `util.Feature` / `util.Activation`."""

import pickle
import sys

import numpy as np
import pytest

from qlens_jax.errors import InputError
from qlens_jax.evaluation.input_score import input_scores_from_strings
from qlens_jax.io.reference_features import read_activating_tokens

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # their util imports TransformerLens

TOP_TOKENS = [["Ġcat", " dog", "fish"], [" the", "Ċ", "of"], []]


@pytest.fixture(scope="module")
def theirs(authors_repo):
    import torch

    grad = torch.is_grad_enabled()
    sys.path.insert(0, str(authors_repo))
    sys.path.insert(0, str(authors_repo / "evaluation"))
    try:
        import input_score
        import util
    finally:
        sys.path.remove(str(authors_repo))
        sys.path.remove(str(authors_repo / "evaluation"))
        torch.set_grad_enabled(grad)
    return util, input_score


def _sample(util):
    def act(tokens, index):
        values = [float(i % 3) for i in range(len(tokens))]
        return util.Activation(
            id="a", token_values=list(zip(tokens, values)), max_value=2.0, min_value=0.0, max_value_token_index=index
        )

    return [
        util.Feature(
            "m",
            4,
            "2",
            "res",
            [
                act([" a", " cat", "!"], 1),
                act([" dog", "x"], 0),
                act(["y", " cat"], 1),
                act(["z"], None),
                act(["w", "v"], 5),
                act(["q", "Ġfish"], -1),
            ],
            size="32k",
        ),
        util.Feature(
            "m", 9, "2", "res", [act(["\n", " of"], 0), act([" the", " of"], 1), act([" the"], 0)], size="32k"
        ),
        util.Feature("m", 1, "3", "res", [act([" x"], 0)], size="32k"),
    ]


def test_activating_tokens_and_scores_equal_the_authors(theirs, tmp_path):
    util, input_score = theirs
    features = _sample(util)
    path = tmp_path / "features.pkl"
    with open(path, "wb") as f:
        pickle.dump(features, f)
    ours = read_activating_tokens(path)
    assert list(ours) == [(2, 4), (2, 9), (3, 1)]
    expected_tokens = [input_score.collect_max_activating_tokens(f)[0] for f in features]
    assert [ours[k] for k in ours] == expected_tokens
    scores = input_scores_from_strings(expected_tokens, TOP_TOKENS)
    expected = [input_score.calculate_overlap_ratio(t, a) for t, a in zip(TOP_TOKENS, expected_tokens)]
    np.testing.assert_allclose(scores, expected)
    assert 0 < scores[0] < 1 and 0 < scores[1] < 1  # markers and whitespace matter, and nothing is stripped


def test_bad_pickles_are_named(tmp_path):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(InputError, match=r"--activations .*bad.pkl: expected a list"):
        read_activating_tokens(path)
    path.write_bytes(b"\x80\x04garbage")
    with pytest.raises(InputError, match="--activations .* not a readable reference feature sample"):
        read_activating_tokens(path)
