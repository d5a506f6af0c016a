"""Where the signatures to evaluate come from: a `Signatures` object or a signatures table file.

`load_signatures` accepts a `Signatures` (or a list of `SignatureTable`), a `signatures.parquet`
written by `qlens signatures` (`qlens_jax.io.parquet`'s schema) or the run folder holding one.
Rows are grouped back into one table per (lens, dictionary, layer), in file order.
`save_signatures` writes any `Signatures` (baselines included) in that same schema.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qlens_jax.errors import InputError
from qlens_jax.lens.signatures import Signatures, SignatureTable


def _stack(column) -> np.ndarray:
    values = column.to_pylist()
    return np.asarray(values) if values else np.zeros((0, 0))


def load_signatures(source) -> Signatures:
    """A `Signatures` from an object or a parquet file / run folder (see the module docstring)."""
    if isinstance(source, Signatures):
        return source
    if isinstance(source, (list, tuple)) and all(isinstance(t, SignatureTable) for t in source):
        return Signatures(source)
    if not isinstance(source, (str, Path)):
        raise InputError(
            f"signatures: expected a Signatures object, a signatures.parquet or a run folder, got {type(source).__name__}"
        )
    from qlens_jax.io.parquet import read_table

    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "signatures.parquet"
    if not path.is_file():
        raise InputError(f"--signatures {source}: no such file (expected signatures.parquet or a finished run folder)")
    try:
        table = read_table(path)
    except (ValueError, OSError) as err:
        raise InputError(f"--signatures {source}: {err}") from None
    keys = list(
        zip(table.column("lens").to_pylist(), table.column("dictionary").to_pylist(), table.column("layer").to_pylist())
    )
    out = Signatures()
    for key in dict.fromkeys(keys):
        rows = np.flatnonzero([k == key for k in keys])
        part = table.take(rows)
        out.append(
            SignatureTable(
                lens=key[0],
                dictionary=key[1],
                layer=int(key[2]),
                feature_ids=np.asarray(part.column("feature").to_pylist(), np.int64),
                top_ids=_stack(part.column("top_ids")).astype(np.int64),
                top_scores=_stack(part.column("top_scores")).astype(np.float32),
                bottom_ids=_stack(part.column("bottom_ids")).astype(np.int64),
                bottom_scores=_stack(part.column("bottom_scores")).astype(np.float32),
                stats=_stats(part),
            )
        )
    return out


def _stats(part) -> dict[str, np.ndarray]:
    """The per-feature statistics a table carries (`--stats`; NaN where a row has none)."""
    from qlens_jax.io.parquet import STAT_COLUMNS

    stats = {}
    for name in STAT_COLUMNS:
        if name in part.column_names and part.column(name).null_count < part.num_rows:
            stats[name] = np.asarray([np.nan if v is None else v for v in part.column(name).to_pylist()], np.float64)
    return stats


def save_signatures(signatures: Signatures, path: str | Path, dictionaries, vocab: np.ndarray) -> Path:
    """Write `signatures` as one parquet table in `qlens signatures`' schema.

    `dictionaries` (in order) give each table's `dictionary_index` and feature strings; `vocab`
    the display string of every token id.
    """
    import pyarrow as pa

    from qlens_jax.io.parquet import signature_rows, write_table

    items = list(dictionaries)
    index = {(d.name, d.layer): i for i, d in enumerate(items)}
    parts = []
    for table in signatures:
        i = index[(table.dictionary, table.layer)]
        strs = [items[i].feature_str(int(f)) for f in table.feature_ids]
        parts.append(
            signature_rows(
                table, keep=len(table), dictionary_index=i, feature_strs=strs, vocab=np.asarray(vocab, dtype=object)
            )
        )
    return write_table(Path(path), pa.concat_tables(parts))
