"""Table 8 (O(T) per stream transition, the per-feature oracle, relative variances) and the
relative-variance plot against hand-computed numbers; relative variances survive the parquet."""

import csv

import numpy as np
import pytest

from qlens_jax.evaluation import load_signatures, save_signatures
from qlens_jax.evaluation.table8 import oracle_rows, table8_stats, write_table8
from qlens_jax.lens.signatures import Signatures, SignatureTable

# (lens, layer, feature) -> (O(T), relative variance)
SCORES = {
    ("logit_lens_value", 0, 1): (0.2, np.nan),
    ("first_order_value", 0, 1): (0.4, 0.1),
    ("query_lens_value", 0, 1): (0.3, 0.3),
    ("logit_lens_value", 0, 2): (0.6, np.nan),
    ("first_order_value", 0, 2): (0.1, 0.2),
    ("query_lens_value", 0, 2): (0.5, 0.5),
    ("logit_lens_value", 1, 1): (0.0, np.nan),
    ("first_order_value", 1, 1): (0.2, 0.4),
    ("query_lens_value", 1, 1): (0.8, 0.6),
    ("logit_lens_value", 1, 2): (0.4, np.nan),
    ("first_order_value", 1, 2): (0.4, 0.6),
    ("query_lens_value", 1, 2): (0.2, 0.8),
    ("query_lens_key", 1, 2): (0.0, 0.9),
    ("zero_out", 1, 2): (0.9, np.nan),  # not a transition lens: left out of the oracle
}


def _rows():
    return [
        {"family": "F", "lens": lens, "layer": layer, "feature": feature, "output_score": o, "relative_variance": v}
        for (lens, layer, feature), (o, v) in SCORES.items()
    ]


def test_oracle_is_the_best_transition_per_feature():
    best = {(r["layer"], r["feature"]): r["output_score"] for r in oracle_rows(_rows())}
    assert best == {(0, 1): 0.4, (0, 2): 0.6, (1, 1): 0.8, (1, 2): 0.4}
    # a feature that one of the three lenses did not score has no oracle
    assert len(oracle_rows([r for r in _rows() if (r["lens"], r["feature"]) != ("query_lens_value", 2)])) == 2


def test_table8_stratified_columns_and_files(tmp_path):
    _, overall = table8_stats(_rows())
    stat = {(s.lens, s.score): s for s in overall}
    assert stat[("oracle", "output_score")].mean == pytest.approx(((0.4 + 0.6) / 2 + (0.8 + 0.4) / 2) / 2)
    assert stat[("first_order_value", "relative_variance")].mean == pytest.approx(((0.1 + 0.2) / 2 + 0.5) / 2)
    assert stat[("query_lens_key", "relative_variance")].n == 1
    assert ("logit_lens_value", "relative_variance") not in stat and ("zero_out", "output_score") not in stat
    paths = write_table8(tmp_path, _rows())
    table = paths["table8_md"].read_text()
    assert "| dictionary | O(T) Logit Lens | O(T) first order | O(T) Query Lens | O(T) oracle |" in table
    assert f"{stat[('oracle', 'output_score')].mean:.3f} ± {stat[('oracle', 'output_score')].ci95:.3f}" in table
    with open(paths["table8_csv"]) as f:
        assert {(r["lens"], r["score"]) for r in csv.DictReader(f)} == set(stat)
    (figure,) = paths["relative_variance_figures"]
    assert figure.name == "relative_variance_F.png" and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_table8(tmp_path / "none", [r for r in _rows() if r["lens"] == "zero_out"]) == {}


class _Dictionary:
    name, layer = "sae", 0

    def feature_str(self, i):
        return f"Feature sae/0/{i}"


def test_relative_variance_round_trips_through_the_signatures_file(tmp_path):
    rng = np.random.default_rng(0)
    tables = Signatures()
    for lens, stats in (("query_lens_value", {"relative_variance": np.asarray([0.25, 0.75])}), ("zero_out", {})):
        tables.append(
            SignatureTable(
                lens,
                "sae",
                0,
                np.asarray([4, 9]),
                rng.integers(0, 30, (2, 5)),
                rng.normal(size=(2, 5)).astype(np.float32),
                rng.integers(0, 30, (2, 5)),
                rng.normal(size=(2, 5)).astype(np.float32),
                stats=stats,
            )
        )
    save_signatures(tables, tmp_path / "signatures.parquet", [_Dictionary()], np.asarray([f"t{i}" for i in range(30)]))
    loaded = load_signatures(tmp_path)
    np.testing.assert_allclose(loaded[0].stats["relative_variance"], [0.25, 0.75])
    assert loaded[1].stats == {}
