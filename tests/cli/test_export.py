"""`qlens export DIR --format jsonl`: the reference implementation's feature_analysis.jsonl."""

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import qlens_jax
from qlens_jax.cli import main

BASE_FIELDS = [
    "feature_index",
    "feature_str",
    "feature_vector",
    "stream_transition",
    "readout",
    "baseline",
    "layer",
    "top_tokens",
    "bottom_tokens",
    "top_ids",
    "bottom_ids",
    "stats",
]
FIRST_ORDER_FIELDS = [
    "layer_indices",
    "layer_top_tokens",
    "layer_bottom_tokens",
    "layer_top_ids",
    "layer_bottom_ids",
    "layer_energy_scores",
]
DESCRIPTION = {
    "logit_lens_value": ("value", "identity", "unembed"),
    "logit_lens_key": ("key", "identity", "embed"),
    "first_order_value": ("value", "first_order", "unembed"),
    "first_order_key": ("key", "first_order", "embed_cosine_centered"),
    "query_lens_value": ("value", "full", "unembed"),
    "query_lens_key": ("key", "full", "embed_cosine_centered"),
}


@pytest.fixture(scope="module")
def exported(full_run):
    out, *_ = full_run
    assert main(["export", str(out), "--format", "jsonl"]) == 0
    return out


@pytest.mark.parametrize("lens", qlens_jax.LENSES)
def test_one_file_per_lens_with_the_reference_fields(exported, lens):
    lines = (exported / "export" / lens / "feature_analysis.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 120
    first_order = lens.startswith("first_order")
    for record in records:
        assert list(record) == BASE_FIELDS + (FIRST_ORDER_FIELDS if first_order else [])
        assert (record["feature_vector"], record["stream_transition"], record["readout"]) == DESCRIPTION[lens]
        assert record["baseline"] == lens
    # the reference's feature_index: position after sorting by (layer, feature)
    assert [r["feature_index"] for r in records] == list(range(120))
    assert [(r["layer"], int(r["feature_str"].rsplit("/", 1)[1])) for r in records] == sorted(
        (layer, f) for layer in (0, 1, 2) for f in range(40)
    )

    table = pq.read_table(exported / "signatures.parquet")
    rows = {r["feature_str"]: r for r in table.filter(pc.equal(table["lens"], lens)).to_pylist()}
    for record in records:
        row = rows[record["feature_str"]]
        for field in ("top_tokens", "bottom_tokens", "top_ids", "bottom_ids", "layer"):
            assert record[field] == row[field]
        if lens.startswith("logit_lens"):
            assert record["stats"] is None
        elif (
            lens.startswith("query_lens") or lens == "first_order_value"
        ):  # --stats: every dictionary writes the residual
            assert record["stats"] == {"relative_variance": row["relative_variance"]}
        else:
            assert record["stats"] == {}
        if first_order:
            assert record["layer_indices"] == row["layer_indices"] and record["layer_top_ids"] == row["layer_top_ids"]
            assert record["layer_bottom_tokens"] == row["layer_bottom_tokens"]
            assert record["layer_energy_scores"] == row["layer_energy"]
            assert (
                len(record["layer_top_tokens"]) == len(record["layer_indices"])
                and len(record["layer_top_tokens"][0]) == 25
            )


def test_export_a_chosen_lens_elsewhere(full_run, tmp_path, capsys):
    out, *_ = full_run
    assert main(["export", str(out), "--lenses", "query_lens_key", "--out", str(tmp_path)]) == 0
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl")] == [
        "query_lens_key/feature_analysis.jsonl"
    ]
    assert "120 features ->" in capsys.readouterr().out
    assert main(["export", str(out), "--lenses", "tuned_lens"]) == 2
    assert "did not compute 'tuned_lens'" in capsys.readouterr().err
