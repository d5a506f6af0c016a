"""`qlens compare`: Jaccard agreement of top-k lists across runs, by hand and through the CLI."""

import csv

import numpy as np
import pytest

from qlens_jax.cli import main
from qlens_jax.errors import InputError
from qlens_jax.evaluation.compare import compare_runs, jaccard
from qlens_jax.lens.signatures import Signatures, SignatureTable


def _sigs(top_ids, features=(0, 1), lens="query_lens_value"):
    top = np.asarray(top_ids)
    zeros = np.zeros(top.shape)
    return Signatures([SignatureTable(lens, "sae", 3, np.asarray(features), top, zeros, top, zeros)])


def test_jaccard_by_hand():
    a, b, c = np.array([[1, 2, 3]]), np.array([[2, 3, 4]]), np.array([[3, 4, 5]])
    assert jaccard([a, b])[0] == pytest.approx(2 / 4)
    assert jaccard([a, b, c])[0] == pytest.approx(1 / 5)
    assert jaccard([a, a])[0] == 1.0


def test_pairs_and_all_runs():
    runs = [
        _sigs([[1, 2, 3], [7, 8, 9]]),
        _sigs([[2, 3, 4], [7, 8, 9]]),
        _sigs([[9, 8, 6], [3, 4, 5]], features=(1, 0)),
    ]
    rows = {a.runs: a for a in compare_runs(runs, k=3)}
    assert set(rows) == {(0, 1), (0, 2), (1, 2), (0, 1, 2)}
    # run 2 lists feature 1 first: features are matched by id, not by row
    assert rows[(0, 1)].mean == pytest.approx((2 / 4 + 1) / 2)
    assert rows[(0, 2)].mean == pytest.approx((2 / 4 + 1 / 5) / 2)
    assert rows[(0, 1, 2)].mean == pytest.approx((2 / 4 + 1 / 5) / 2)
    assert rows[(0, 1)].n_features == 2 and rows[(0, 1)].ci95 > 0
    with pytest.raises(InputError, match="at least two runs"):
        compare_runs(runs[:1])
    with pytest.raises(InputError, match="no \\(lens, dictionary, layer\\) in common"):
        compare_runs([runs[0], _sigs([[1, 2, 3], [4, 5, 6]], lens="logit_lens_value")])
    with pytest.raises(InputError, match="fewer than --k 5"):
        compare_runs(runs, k=5)


def test_cli_on_two_seeds_of_the_bundled_model(tmp_path):
    from qlens_jax import default

    outs = []
    for seed in (0, 1):
        out = tmp_path / f"seed{seed}"
        code = main(
            [
                "signatures",
                "--model",
                str(default.model_dir()),
                "--dictionary",
                str(default.dictionary_dir("resid-post-1")),
                "--corpus",
                str(default.heldout_text_path()),
                "--num-samples",
                "4",
                "--max-length",
                "16",
                "--seed",
                str(seed),
                "--features",
                "0-9",
                "--lenses",
                "query_lens_value,logit_lens_value",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        assert code == 0
        outs.append(str(out))
    assert main(["compare", *outs, "--out", str(tmp_path / "cmp")]) == 0
    with open(tmp_path / "cmp" / "compare.csv") as f:
        rows = {r["lens"]: r for r in csv.DictReader(f)}
    assert float(rows["logit_lens_value"]["jaccard_mean"]) == 1.0  # no sample involved
    assert 0 < float(rows["query_lens_value"]["jaccard_mean"]) < 1  # the sample moves the transport
    assert rows["query_lens_value"]["runs"] == "seed0 & seed1" and rows["query_lens_value"]["n_features"] == "10"
    assert main(["compare", outs[0], str(tmp_path / "missing")]) == 2
