"""Token index of a run's signature files, so that token search does not scan every list.

For each Parquet file of a run (`signatures.parquet`, or each finished shard of a run in
progress) one index file: a row per entry of every stored top-k and bottom-k list
(`token_id, side, rank, score, lens, dictionary_index, feature`), sorted by token id and written
in row groups of `ROW_GROUP` rows, so that DuckDB reads only the row groups of the searched ids
(their Parquet statistics bound the ids). Built by DuckDB from the file itself, in the cache
(`rows.cache_root()/token-index`), never in the run folder; keyed by the file's identity
(`literal_paths.file_identity`: path, device, inode, size, modification time), so a rewritten
file is indexed again; DuckDB reads the file through `literal_paths.duckdb_path`, never its path
as a pattern. A background thread (`indexer`) indexes
the files as they appear; until a file has its index, searches scan that file instead.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import duckdb

from qlens_jax.serve.literal_paths import duckdb_path, file_identity
from qlens_jax.serve.rows import cache_root

INDEX_VERSION = 2  # 2: keyed by the file's identity; built from the file itself, never a pattern
ROW_GROUP = 65536
_LIST = """SELECT unnest({side}_ids) AS token_id, '{side}' AS side, unnest(range(1, len({side}_ids) + 1)) AS rank,
                  unnest({side}_scores) AS score, lens, dictionary_index, feature FROM read_parquet('{source}')"""


def index_path(source: Path) -> Path:
    """Where the index of signature file `source` (as it is now) lives."""
    key = f"{INDEX_VERSION}\0{file_identity(source)}"
    return cache_root() / "token-index" / f"{hashlib.sha256(key.encode()).hexdigest()}.parquet"


def build_index(source: Path, threads: int = 1, memory_limit: str = "1GB") -> Path:
    """Write the index of `source` (if missing) and return its path."""
    target = index_path(source)
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    spill = cache_root() / "duckdb-tmp"
    spill.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{target.name}")
    quoted = duckdb_path(source).replace("'", "''")
    lists = " UNION ALL ".join(_LIST.format(side=side, source=quoted) for side in ("top", "bottom"))
    connection = duckdb.connect(
        ":memory:",
        config={
            "threads": str(threads),
            "memory_limit": memory_limit,
            "temp_directory": str(spill),
            "preserve_insertion_order": "false",
        },
    )
    try:
        target_sql = str(temporary).replace("'", "''")
        connection.execute(
            f"COPY (SELECT * FROM ({lists}) ORDER BY token_id, side DESC, rank, lens, dictionary_index, feature) "
            f"TO '{target_sql}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP})"
        )
    finally:
        connection.close()
    os.replace(temporary, target)
    return target


class TokenIndex:
    """A token index opened for reading: the row groups holding some token ids, read with pyarrow.

    The index is sorted by token id, so the row groups' statistics bound the ids they hold; they
    are read once here, and a search reads only the row groups of its ids (one, usually), without
    a query engine's planning per search.
    """

    def __init__(self, path: Path):
        import numpy as np
        import pyarrow.parquet as pq

        self.path = path
        self._metadata = pq.ParquetFile(path).metadata
        column = self._metadata.schema.names.index("token_id")
        bounds = [self._metadata.row_group(g).column(column).statistics for g in range(self._metadata.num_row_groups)]
        if any(s is None or not s.has_min_max for s in bounds):
            raise ValueError(f"{path}: a row group without token id statistics")
        self._low = np.asarray([s.min for s in bounds], np.int64)
        self._high = np.asarray([s.max for s in bounds], np.int64)

    def entries(self, token_ids: list[int], lens: str | None = None) -> dict[str, list]:
        """The index rows of these ids (and of `lens` only, when given), as columns:
        `token_id, side, rank, score, lens, dictionary_index, feature`."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        ids = np.asarray(token_ids, np.int64)
        groups = np.flatnonzero(
            ((self._low[:, None] <= ids[None, :]) & (ids[None, :] <= self._high[:, None])).any(axis=1)
        )
        if not len(groups):
            return {name: [] for name in self._metadata.schema.names}
        table = pq.ParquetFile(self.path, metadata=self._metadata).read_row_groups(groups.tolist(), use_threads=False)
        keep = pc.is_in(table.column("token_id"), value_set=pa.array(ids, pa.int32()))
        if lens is not None:
            keep = pc.and_(keep, pc.equal(table.column("lens"), lens))
        return table.filter(keep).to_pydict()
