"""The browsing queries of `qlens serve`, answered from the run's Parquet files (DuckDB) and their indexes.

Nothing of the run is loaded into memory: every query scans the files with projection and
row-group pruning (the shards are ordered by lens, dictionary and feature, and their Parquet
statistics let DuckDB skip row groups). A feature lookup reads the feature index of each file
(`feature_index`: its rows uncompressed at known offsets) once it is built, and the file's row
groups until then. Token search matches token ids, found from the typed text with the viewer's
rule (case and surrounding spaces ignored), in the stored top-k and bottom-k lists of every lens:
through the token index of each file (`token_index`) once it is built, by scanning the file until
then. Both indexes are built in the background (`indexer`).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from pathlib import Path

import duckdb

from qlens_jax.serve.errors import NotFoundError, QueryError
from qlens_jax.serve.feature_index import FeatureIndex
from qlens_jax.serve.indexer import Indexer
from qlens_jax.serve.literal_paths import duckdb_paths
from qlens_jax.serve.rundata import DictionaryEntry, RunData
from qlens_jax.serve.token_index import TokenIndex

MAX_PAGE = 200
MAX_TOKEN_IDS = 64  # distinct ids one search may match (normalized spellings of one token)
# Token strings are not read from the files (decompressing them is most of a lookup's cost):
# they are the run's vocabulary strings of the ids, as the run wrote them.
_LIST_COLUMNS = ("top_ids", "top_scores", "bottom_ids", "bottom_scores")
_ABSENT = 1 << 30


def normalize_token(text: str) -> str:
    """The viewer's token matching rule: surrounding spaces and case ignored."""
    return text.strip().lower()


class Queries:
    """DuckDB over one run folder; safe to call from several threads at once."""

    def __init__(self, run: RunData, vocab: list[str], threads: int | None = None, token_index: bool = True):
        """`token_index`: look features up and search tokens through the files' indexes (`Indexer`;
        built by `indexer.start()` in the background, or `indexer.index_all()`) where they are
        ready; False: always read the files."""
        self.run = run
        self.indexer = Indexer(run.parquet_files) if token_index else None
        self._feature_indexes: dict[Path, FeatureIndex] = {}
        self._token_indexes: dict[Path, TokenIndex] = {}
        self.vocab = vocab
        self._by_text: dict[str, list[int]] = defaultdict(list)
        for token_id, text in enumerate(vocab):
            key = normalize_token(text)
            if key:
                self._by_text[key].append(token_id)
        config = {"memory_limit": "1GB"}
        if threads:
            config["threads"] = str(threads)
        self._connection = duckdb.connect(":memory:", config=config)
        # GLOBAL: every query runs on its own cursor, and a session setting would not reach them
        # (each query would parse the footer of a 1M-feature file again, ~2x the lookup time).
        self._connection.execute("SET GLOBAL parquet_metadata_cache = true")
        self._lock = threading.Lock()

    def _query(self, sql: str, params: dict) -> list[dict]:
        """`sql` with `params` (paths in them already `literal_paths.duckdb_paths`). A file that
        changed since it was checked and no longer reads is a `RunFileError` naming it."""
        with self._lock:
            cursor = self._connection.cursor()
        try:
            result = cursor.execute(sql, params)
            names = [d[0] for d in result.description]
            return [dict(zip(names, row)) for row in result.fetchall()]
        except duckdb.Error:
            self.run.parquet_files()  # checks every file as it is now: raises naming the one that changed
            raise
        finally:
            cursor.close()

    def _execute(self, sql: str, params: list, files: list[Path] | None = None) -> list[dict]:
        """`sql` over `files` (`{files}` in it; default: the run's current signature files)."""
        files = self.run.parquet_files() if files is None else files
        if not files:
            return []
        return self._query(
            sql.replace("{files}", "read_parquet($files)"), {"files": duckdb_paths(files), **dict(params)}
        )

    # ---- features ---------------------------------------------------------------------------
    def _rows_to_features(self, rows: list[dict]) -> list[dict]:
        features: dict[tuple[int, int], dict] = {}
        for row in rows:
            key = (row["dictionary_index"], row["feature"])
            entry = features.setdefault(
                key,
                {
                    "dictionary": row["dictionary"],
                    "dictionary_index": row["dictionary_index"],
                    "layer": row["layer"],
                    "feature": row["feature"],
                    "feature_str": row["feature_str"],
                    "lenses": {},
                },
            )
            lists = {
                side: {
                    "ids": row[f"{side}_ids"],
                    "tokens": [self.vocab[i] for i in row[f"{side}_ids"]],
                    "scores": row[f"{side}_scores"],
                }
                for side in ("top", "bottom")
            }
            entry["lenses"][row["lens"]] = {
                **lists,
                "relative_variance": row["relative_variance"],
            }
        return list(features.values())

    def feature(self, dictionary: DictionaryEntry, feature: int) -> dict:
        """Every lens's lists of one feature; `NotFoundError` when the run has none for it."""
        if not 0 <= feature < dictionary.d_sae:
            raise NotFoundError(
                f"feature {feature} is out of range for {dictionary.name}/{dictionary.layer} ({dictionary.d_sae} features)"
            )
        files = self.run.parquet_files()
        indexed, scanned = self.indexer.split(files, "feature") if self.indexer is not None else ([], files)
        rows = [row for folder in indexed for row in self._feature_index(folder).rows(dictionary.index, feature)]
        rows += self._execute(
            "SELECT lens, dictionary, dictionary_index, layer, feature, feature_str, relative_variance, "
            + ", ".join(_LIST_COLUMNS)
            + " FROM {files} WHERE dictionary_index = $d AND feature = $f",
            [("d", dictionary.index), ("f", feature)],
            scanned,
        )
        rows.sort(key=lambda row: row["lens"])
        if not rows:
            state = "" if self.run.complete else " (yet: the run is still in progress)"
            raise NotFoundError(
                f"feature {dictionary.name}/{dictionary.layer}/{feature} has no signatures in this run{state}"
            )
        return self._rows_to_features(rows)[0]

    def features_indexed(self) -> bool:
        """Whether every current file has its feature index (a feature lookup then only reads a
        few hundred bytes: cheap enough to answer without a worker thread)."""
        return self.indexer is not None and not self.indexer.split(self.run.parquet_files(), "feature")[1]

    def _feature_index(self, folder: Path) -> FeatureIndex:
        index = self._feature_indexes.get(folder)
        if index is None:
            with self._lock:
                index = self._feature_indexes.setdefault(folder, FeatureIndex(folder))
        return index

    def page(self, dictionaries: list[DictionaryEntry], start: int = 0, limit: int = 50) -> dict:
        """Up to `limit` features with id >= `start` of these dictionaries, by feature id."""
        if not 1 <= limit <= MAX_PAGE:
            raise QueryError(f"limit {limit}: must be between 1 and {MAX_PAGE}")
        if start < 0:
            raise QueryError(f"start {start}: must be at least 0")
        indices = [d.index for d in dictionaries]
        ids = self._execute(
            "SELECT DISTINCT feature FROM {files} WHERE list_contains($ds, dictionary_index) AND feature >= $start "
            "ORDER BY feature LIMIT $limit",
            [("ds", indices), ("start", start), ("limit", limit)],
        )
        if not ids:
            return {"features": [], "next": None}
        first, last = ids[0]["feature"], ids[-1]["feature"]
        rows = self._execute(
            "SELECT lens, dictionary, dictionary_index, layer, feature, feature_str, relative_variance, "
            + ", ".join(_LIST_COLUMNS)
            + " FROM {files} WHERE list_contains($ds, dictionary_index) AND feature BETWEEN $lo AND $hi "
            "ORDER BY feature, dictionary_index, lens",
            [("ds", indices), ("lo", first), ("hi", last)],
        )
        return {"features": self._rows_to_features(rows), "next": last + 1 if len(ids) == limit else None}

    # ---- token search -----------------------------------------------------------------------
    def token_ids(self, text: str) -> list[int]:
        """Ids whose display string matches `text` under `normalize_token`."""
        key = normalize_token(text)
        if not key:
            raise QueryError("empty token: type a token, e.g. ' Paris' or 'the'")
        return self._by_text.get(key, [])[:MAX_TOKEN_IDS]

    def token_search(self, text: str, lens: str | None = None, limit: int = 50, offset: int = 0) -> dict:
        """Features with the token in a stored top-k or bottom-k list, best rank first (a top-k
        list before a bottom-k list; one hit per feature and lens)."""
        if not 1 <= limit <= MAX_PAGE:
            raise QueryError(f"limit {limit}: must be between 1 and {MAX_PAGE}")
        if not 0 <= offset <= 10**7:
            raise QueryError(f"offset {offset}: must be between 0 and 10000000")
        if lens is not None and lens not in self.run.lenses:
            raise QueryError(f"lens {lens!r}: not a lens of this run ({', '.join(self.run.lenses)})")
        ids = self.token_ids(text)
        files = self.run.parquet_files()
        if not ids or not files:
            return {"token": text, "token_ids": ids, "total": 0, "hits": []}
        indexed, scanned = self.indexer.split(files, "token") if self.indexer is not None else ([], files)
        if not scanned:
            rows = self._indexed_search(indexed, ids, lens, limit, offset)
        else:
            rows = self._sql_search(indexed, scanned, ids, lens, limit, offset)
        total = rows[0]["total"] if rows else 0
        hits = []
        for row in rows:
            entry = self.run.dictionaries[row["dictionary_index"]]
            hits.append(
                {
                    "lens": row["lens"],
                    "dictionary": entry.name,
                    "dictionary_index": entry.index,
                    "layer": entry.layer,
                    "feature": row["feature"],
                    "feature_str": f"Feature {entry.name}/{entry.layer}/{row['feature']}",
                    "side": row["side"],
                    "rank": row["rank"],
                    "score": row["score"],
                }
            )
        return {"token": text, "token_ids": ids, "total": total, "hits": hits}

    def _sql_search(
        self, indexed: list[Path], scanned: list[Path], ids: list[int], lens: str | None, limit: int, offset: int
    ) -> list[dict]:
        """`token_search`'s rows by DuckDB, over token indexes and files not indexed yet: the best
        entry (top list first, then lowest rank) per lens and feature, ordered, with the total."""
        params = {"limit": limit, "offset": offset, **{f"t{i}": t for i, t in enumerate(ids)}}
        lens_filter = ""
        if lens is not None:
            lens_filter, params["lens"] = "lens = $lens AND ", lens
        parts = []
        if indexed:
            params["indexed"] = duckdb_paths(indexed)
            wanted = ", ".join(f"$t{i}" for i in range(len(ids)))
            parts.append(
                f"SELECT lens, dictionary_index, feature, side, rank, score FROM read_parquet($indexed) "
                f"WHERE {lens_filter}token_id IN ({wanted})"
            )
        if scanned:
            params["scanned"] = duckdb_paths(scanned)
            parts.append(self._scan_sql(len(ids), lens_filter))
        return self._query(
            f"""
            WITH hits AS ({" UNION ALL ".join(parts)}),
            best AS (SELECT * FROM hits QUALIFY row_number() OVER (PARTITION BY lens, dictionary_index, feature ORDER BY side DESC, rank) = 1)
            SELECT lens, dictionary_index, feature, side, rank, score, count(*) OVER () AS total
            FROM best ORDER BY side DESC, rank, lens, dictionary_index, feature LIMIT $limit OFFSET $offset
            """,
            params,
        )

    def _indexed_search(
        self, indexed: list[Path], ids: list[int], lens: str | None, limit: int, offset: int
    ) -> list[dict]:
        """`_sql_search`'s rows when every file has its token index: the few row groups of the
        ids read with pyarrow (`TokenIndex`), the best entry per lens and feature kept here."""
        best: dict[tuple, tuple] = {}
        for path in indexed:
            columns = self._token_index(path).entries(ids, lens)
            for row in zip(
                columns["lens"],
                columns["dictionary_index"],
                columns["feature"],
                columns["side"],
                columns["rank"],
                columns["score"],
            ):
                key, order = row[:3], (row[3] != "top", row[4])
                if key not in best or order < best[key][0]:
                    best[key] = (order, row)
        ranked = sorted(best.values(), key=lambda entry: (*entry[0], *entry[1][:3]))
        names = ("lens", "dictionary_index", "feature", "side", "rank", "score")
        return [dict(zip(names, row), total=len(ranked)) for _, row in ranked[offset : offset + limit]]

    def _token_index(self, path: Path) -> TokenIndex:
        index = self._token_indexes.get(path)
        if index is None:
            with self._lock:
                index = self._token_indexes.setdefault(path, TokenIndex(path))
        return index

    @staticmethod
    def _scan_sql(n_ids: int, lens_filter: str) -> str:
        """The best entry of each row of the files not indexed yet that lists one of the ids."""
        position = lambda column: (
            "least(" + ", ".join(f"coalesce(list_position({column}, $t{i}), {_ABSENT})" for i in range(n_ids)) + ")"
        )
        # list_contains per id is several times faster in DuckDB than one list_has_any
        contains = " OR ".join(
            f"list_contains({column}, $t{i})" for column in ("top_ids", "bottom_ids") for i in range(n_ids)
        )
        return f"""
            SELECT lens, dictionary_index, feature,
                   CASE WHEN rt < {_ABSENT} THEN 'top' ELSE 'bottom' END AS side,
                   CASE WHEN rt < {_ABSENT} THEN rt ELSE rb END AS rank,
                   CASE WHEN rt < {_ABSENT} THEN top_scores[rt] ELSE bottom_scores[rb] END AS score
            FROM (SELECT lens, dictionary_index, feature, top_scores, bottom_scores,
                         {position("top_ids")} AS rt, {position("bottom_ids")} AS rb
                  FROM read_parquet($scanned) WHERE {lens_filter}({contains}))
        """
