"""The feature index holds a signature file's rows exactly, whatever their list lengths and null
statistics, and is rebuilt when the file changes."""

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qlens_jax.io.parquet import SCHEMA, WRITE_OPTIONS
from qlens_jax.serve.feature_index import FeatureIndex, build_feature_index, index_folder
from qlens_jax.serve.indexer import Indexer

COLUMNS = (
    "lens",
    "dictionary",
    "dictionary_index",
    "layer",
    "feature",
    "feature_str",
    "relative_variance",
    "top_ids",
    "top_scores",
    "bottom_ids",
    "bottom_scores",
)


def _irregular_file(serve_run, path):
    """The run's rows with lists of several lengths in one row group, some null relative
    variances and unicode feature strings, in two row groups."""
    rows = pq.read_table(serve_run[0] / "signatures.parquet").to_pylist()
    for i, row in enumerate(rows):
        cut = 1 + i % 7
        row["top_ids"], row["top_scores"], row["top_tokens"] = (
            row["top_ids"][:cut],
            row["top_scores"][:cut],
            row["top_tokens"][:cut],
        )
        if i % 3 == 0:
            row["bottom_ids"], row["bottom_scores"], row["bottom_tokens"] = [], [], []
        row["relative_variance"] = None if i % 2 else 0.5 + i
        row["feature_str"] = f"Feature {row['dictionary']}/{row['layer']}/{row['feature']} é{i}"
    pq.write_table(pa.Table.from_pylist(rows, SCHEMA), path, row_group_size=len(rows) // 2 + 1, **WRITE_OPTIONS)
    return rows


def test_rows_with_irregular_lists_and_nulls(serve_run, tmp_path):
    source = tmp_path / "irregular.parquet"
    rows = _irregular_file(serve_run, source)
    index = FeatureIndex(build_feature_index(source))
    keys = {(r["dictionary_index"], r["feature"]) for r in rows}
    for dictionary_index, feature in sorted(keys):
        expected = sorted(
            (
                {c: r[c] for c in COLUMNS}
                for r in rows
                if (r["dictionary_index"], r["feature"]) == (dictionary_index, feature)
            ),
            key=lambda r: r["lens"],
        )
        got = sorted(index.rows(dictionary_index, feature), key=lambda r: r["lens"])
        assert got == expected
    assert index.rows(0, 10**6) == [] and index.rows(99, 0) == []


def test_a_rewritten_file_gets_a_new_index(serve_run, tmp_path):
    source = tmp_path / "irregular.parquet"
    _irregular_file(serve_run, source)
    indexer = Indexer(lambda: [source], kinds=("feature",))
    indexer.index_all()
    (first,), missing = indexer.split([source], "feature")
    assert first == index_folder(source) and missing == []
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert indexer.split([source], "feature") == ([], [source])  # the old index no longer answers for it
    indexer.index_all()
    (second,), _ = indexer.split([source], "feature")
    assert second != first and second == index_folder(source)


def test_a_file_the_index_cannot_hold_is_reported_and_read_directly(tmp_path):
    source = tmp_path / "not-signatures.parquet"
    pq.write_table(pa.table({"x": [1, 2]}), source)
    indexer = Indexer(lambda: [source], kinds=("feature",))
    indexer.index_all()
    assert indexer.split([source], "feature") == ([], [source])
    assert "no column(s) lens" in indexer.progress("feature")["error"]
    with pytest.raises(ValueError, match="index kinds"):
        Indexer(lambda: [], kinds=("nope",))
