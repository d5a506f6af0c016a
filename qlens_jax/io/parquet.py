"""The signatures table as Parquet: one row per (lens, dictionary, feature), fixed schema.

Every shard and the assembled `signatures.parquet` use `SCHEMA` (no metadata, no
timestamps) and the same writer options, so the same signatures give the same bytes.
Columns a lens does not produce are null (Logit Lens has no per-layer lists; statistics
exist only when asked for).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from qlens_jax.io.atomic import write_atomic
from qlens_jax.lens.signatures import SignatureTable

_IDS, _SCORES, _TOKENS = pa.list_(pa.int32()), pa.list_(pa.float32()), pa.list_(pa.string())

STAT_COLUMNS = ("relative_variance",)
FIRST_ORDER_COLUMNS = (
    ("layer_indices", _IDS),
    ("layer_top_ids", pa.list_(_IDS)),
    ("layer_top_tokens", pa.list_(_TOKENS)),
    ("layer_top_scores", pa.list_(_SCORES)),
    ("layer_bottom_ids", pa.list_(_IDS)),
    ("layer_bottom_tokens", pa.list_(_TOKENS)),
    ("layer_bottom_scores", pa.list_(_SCORES)),
    ("layer_energy", _SCORES),
)
SCHEMA = pa.schema(
    [
        ("lens", pa.string()),
        ("dictionary", pa.string()),
        ("dictionary_index", pa.int32()),
        ("layer", pa.int32()),
        ("feature", pa.int64()),
        ("feature_str", pa.string()),
        ("top_ids", _IDS),
        ("top_tokens", _TOKENS),
        ("top_scores", _SCORES),
        ("bottom_ids", _IDS),
        ("bottom_tokens", _TOKENS),
        ("bottom_scores", _SCORES),
        *((name, pa.float32()) for name in STAT_COLUMNS),
        *FIRST_ORDER_COLUMNS,
    ]
)
WRITE_OPTIONS = dict(compression="zstd", compression_level=3, use_dictionary=True, write_statistics=True)


def _nested(values: np.ndarray, value_type: pa.DataType) -> pa.Array:
    """`[n, a, b, ...]` numpy -> list<list<...>> arrow, one list level per axis after the first."""
    if values.ndim == 1:
        return pa.array(values, type=value_type)
    n, width = values.shape[:2]
    inner = _nested(values.reshape(n * width, *values.shape[2:]), value_type)
    offsets = pa.array(np.arange(n + 1, dtype=np.int32) * width, type=pa.int32())
    return pa.ListArray.from_arrays(offsets, inner)


def signature_rows(
    table: SignatureTable,
    *,
    keep: int,
    dictionary_index: int,
    feature_strs: Sequence[str],
    vocab: np.ndarray,
) -> pa.Table:
    """The first `keep` features of a kernel result as rows of `SCHEMA`.

    `vocab` is an object array of display strings, one per token id; `feature_strs` one
    string per kept feature.
    """
    n = keep
    ids = lambda a: np.asarray(a)[:n].astype(np.int32)
    scores = lambda a: np.asarray(a)[:n].astype(np.float32)
    columns: dict[str, pa.Array] = {
        "lens": pa.array([table.lens] * n, pa.string()),
        "dictionary": pa.array([table.dictionary] * n, pa.string()),
        "dictionary_index": pa.array(np.full(n, dictionary_index, np.int32)),
        "layer": pa.array(np.full(n, table.layer, np.int32)),
        "feature": pa.array(np.asarray(table.feature_ids)[:n].astype(np.int64)),
        "feature_str": pa.array(list(feature_strs), pa.string()),
    }
    for side in ("top", "bottom"):
        side_ids = ids(getattr(table, f"{side}_ids"))
        columns[f"{side}_ids"] = _nested(side_ids, pa.int32())
        columns[f"{side}_tokens"] = _nested(vocab[side_ids], pa.string())
        columns[f"{side}_scores"] = _nested(scores(getattr(table, f"{side}_scores")), pa.float32())
    unknown = set(table.stats) - set(STAT_COLUMNS)
    if unknown:
        raise ValueError(f"statistics {sorted(unknown)} have no column in the signatures schema")
    for name in STAT_COLUMNS:
        value = table.stats.get(name)
        columns[name] = pa.array(scores(value)) if value is not None else pa.nulls(n, pa.float32())
    first_order = table.layer_indices is not None
    for name, kind in FIRST_ORDER_COLUMNS:
        if not first_order:
            columns[name] = pa.nulls(n, kind)
        elif name == "layer_indices":
            columns[name] = _nested(
                np.broadcast_to(np.asarray(table.layer_indices, np.int32), (n, len(table.layer_indices))), pa.int32()
            )
        elif name.endswith("_tokens"):
            columns[name] = _nested(vocab[ids(getattr(table, name.replace("_tokens", "_ids")))], pa.string())
        elif name.endswith("_ids"):
            columns[name] = _nested(ids(getattr(table, name)), pa.int32())
        else:
            columns[name] = _nested(scores(getattr(table, name)), pa.float32())
    return pa.Table.from_arrays([columns[f.name] for f in SCHEMA], schema=SCHEMA)


def write_table(path: Path, table: pa.Table, before_publish: Callable[[], None] | None = None) -> Path:
    """Write one table atomically with the fixed writer options."""
    return write_atomic(Path(path), lambda tmp: pq.write_table(table, tmp, **WRITE_OPTIONS), before_publish)


def read_table(path: Path) -> pa.Table:
    """A signatures file, checked against `SCHEMA`."""
    table = pq.read_table(path).replace_schema_metadata(None)
    if not table.schema.equals(SCHEMA):
        raise ValueError(f"{path}: not a qlens signatures table (schema differs)")
    return table


def assemble(shards: Iterable[Path], final: Path) -> int:
    """Concatenate shard files, in the given order, into `final` (one row group per shard).

    Returns the number of rows. Streams shard by shard: memory stays at one shard.
    """
    rows = 0

    def write(tmp: Path) -> None:
        nonlocal rows
        with pq.ParquetWriter(tmp, SCHEMA, **WRITE_OPTIONS) as writer:
            for shard in shards:
                table = read_table(shard)
                rows += table.num_rows
                writer.write_table(table)

    write_atomic(Path(final), write)
    return rows
