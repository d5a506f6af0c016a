"""Aggregates against hand-computed numbers; the report files; parquet round trip of signatures."""

import csv
import math

import numpy as np
import pytest

from qlens_jax.evaluation import load_signatures, save_signatures, summarize, write_report
from qlens_jax.evaluation.stats import group_stats, layer_groups
from qlens_jax.lens.signatures import Signatures, SignatureTable


def _rows():
    # family F, lens a: layer 0 scores [0, 1, 1] (+ one NaN), layer 1 scores [0.5, 0.5]
    rows = [
        {"family": "F", "lens": "a", "layer": 0, "input_score": v, "output_score": 1 - v}
        for v in (0.0, 1.0, 1.0, np.nan)
    ]
    rows += [{"family": "F", "lens": "a", "layer": 1, "input_score": v, "output_score": v} for v in (0.5, 0.5)]
    return rows


def test_per_layer_and_stratified_by_hand():
    per_layer, overall = summarize(_rows(), ("input_score", "output_score"))
    layer0 = next(s for s in per_layer if s.layer == 0 and s.score == "input_score")
    assert (layer0.n, layer0.n_missing) == (3, 1)
    assert layer0.mean == pytest.approx(2 / 3)
    assert layer0.std == pytest.approx(math.sqrt(1 / 3))  # sample std of 0, 1, 1
    assert layer0.ci95 == pytest.approx(1.96 * math.sqrt(1 / 3) / math.sqrt(3))
    strat = next(s for s in overall if s.score == "input_score")
    assert strat.mean == pytest.approx((2 / 3 + 0.5) / 2)  # average of layer means, not the pooled mean
    assert strat.se == pytest.approx(math.sqrt((1 / 3) / 3 + 0.0 / 2) / 2)
    assert strat.ci95 == pytest.approx(1.96 * strat.se)
    assert (strat.layers, strat.n, strat.n_missing) == (2, 5, 1)


def test_the_authors_layer_groups():
    assert list(layer_groups(range(12))) == ["Early [0, 4)", "Middle [4, 8)", "Late [8, 12)"]
    assert layer_groups(range(12))["Late [8, 12)"] == [8, 9, 10, 11]
    assert layer_groups(range(26)) == {
        "Early [0, 9)": list(range(9)),
        "Middle [9, 18)": list(range(9, 18)),
        "Late [18, 26)": list(range(18, 26)),
    }  # 26 = 3 x 8 + 2: the first two one longer
    assert list(layer_groups([5, 9, 12, 15])) == ["Layer 5", "Layer 9", "Layer 12", "Layer 15"]  # few layers: one each
    rows = [
        {"family": "F", "lens": "a", "layer": layer, "input_score": v}
        for layer in range(8)
        for v in (layer / 10, layer / 10 + 0.1)
    ]
    per_layer, _ = summarize(rows, ("input_score",))
    groups = dict(group_stats(per_layer))
    assert list(groups) == ["Early [0, 3)", "Middle [3, 6)", "Late [6, 8)"]
    assert groups["Late [6, 8)"].mean == pytest.approx((0.65 + 0.75) / 2) and groups["Late [6, 8)"].layers == 2


def test_single_feature_layer_has_no_std():
    rows = [
        {"family": "F", "lens": "a", "layer": 0, "input_score": 0.5},
        {"family": "F", "lens": "a", "layer": 1, "input_score": 0.2},
        {"family": "F", "lens": "a", "layer": 1, "input_score": 0.4},
    ]
    per_layer, overall = summarize(rows, ("input_score",))
    assert math.isnan(per_layer[0].std) and math.isnan(overall[0].se)
    assert overall[0].mean == pytest.approx((0.5 + 0.3) / 2)


def test_report_files(tmp_path):
    rows = _rows() + [{**r, "lens": "b", "input_score": 0.25} for r in _rows()]
    per_layer, overall = summarize(rows, ("input_score", "output_score"))
    paths = write_report(tmp_path, rows, per_layer, overall, ("input_score", "output_score"), preamble="# Test")
    table = (tmp_path / "table.md").read_text()
    assert "| lens | I(T) | n | O(T) | n |" in table
    assert "| a | 0.583 ± 0.327 | 5 (+1 none) |" in table
    assert "| b | 0.250 ± 0.000 | 6 |" in table
    assert "layer 0" in table and "0.667 / 0.577 / 3" in table
    with open(paths["table_csv"]) as f:
        assert {r["lens"] for r in csv.DictReader(f)} == {"a", "b"}
    with open(paths["scores"]) as f:
        assert len(list(csv.DictReader(f))) == len(rows)
    assert [p.name for p in paths["figures"]] == ["figure_F.png", "figure_groups_F.png"]
    assert (tmp_path / "figure_groups_F.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "figure_F.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Dictionary:
    def __init__(self, name, layer):
        self.name, self.layer = name, layer

    def feature_str(self, i):
        return f"Feature {self.name}/{self.layer}/{i}"


def test_signatures_parquet_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    tables = Signatures()
    for lens in ("zero_out", "tuned_lens"):
        for name, layer in (("resid-post-2k", 0), ("resid-post-2k", 1)):
            ids = np.asarray([3, 8, 20])
            tables.append(
                SignatureTable(
                    lens,
                    name,
                    layer,
                    ids,
                    rng.integers(0, 50, (3, 5)),
                    rng.normal(size=(3, 5)).astype(np.float32),
                    rng.integers(0, 50, (3, 5)),
                    rng.normal(size=(3, 5)).astype(np.float32),
                )
            )
    vocab = np.asarray([f"t{i}" for i in range(50)], dtype=object)
    save_signatures(
        tables,
        tmp_path / "signatures.parquet",
        [_Dictionary("resid-post-2k", 0), _Dictionary("resid-post-2k", 1)],
        vocab,
    )
    loaded = load_signatures(tmp_path)  # the run-folder form
    assert [(t.lens, t.dictionary, t.layer) for t in loaded] == [(t.lens, t.dictionary, t.layer) for t in tables]
    for a, b in zip(loaded, tables):
        np.testing.assert_array_equal(a.feature_ids, b.feature_ids)
        np.testing.assert_array_equal(a.top_ids, b.top_ids)
        np.testing.assert_array_equal(a.bottom_scores, b.bottom_scores)
