"""Feature index of a run's signature files, so that a feature lookup reads a few hundred bytes
instead of decompressing the row groups that hold the feature.

A run writes one row group per shard of 4,096 features and lens; answering one feature from the
Parquet file means decompressing megabytes of lists (tens of milliseconds of CPU, and requests
queue for the CPU under load). The index holds the same rows, uncompressed, at known offsets:

- `keys.npy` (sorted `dictionary_index << 40 | feature`) and `rows.npy` (the file row of each key);
- per file row: `lens.npy` (index into meta.json's lens names), `relative_variance.npy` and
  `relative_variance_valid.npy`, the list lengths `n_top.npy` / `n_bottom.npy`, and offsets into
  `lists.bin` (`[top_ids | top_scores | bottom_ids | bottom_scores]`, int32 and float32 values as
  the file stores them) and `strings.bin` (`feature_str`, UTF-8);
- `meta.json`: the lens names, each dictionary index's name and layer, the row count.

The arrays are memory-mapped and the values read with `pread`, so the server's memory stays at
the pages a lookup touches. Built from the file with pyarrow, one row group at a time, in the
cache (`rows.cache_root()/feature-index`), never in the run folder; keyed like the token index by
the file's identity (`literal_paths.file_identity`: path, device, inode, size, modification time).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np

from qlens_jax.serve.literal_paths import file_identity
from qlens_jax.serve.rows import cache_root
from qlens_jax.serve.rundata import COLUMNS

INDEX_VERSION = 2  # 2: keyed by the file's identity (device and inode too)
_FEATURE_BITS = 40
_ARRAYS = (
    "keys",
    "rows",
    "lens",
    "relative_variance",
    "relative_variance_valid",
    "n_top",
    "n_bottom",
    "list_offsets",
    "string_offsets",
)


class FeatureIndexError(ValueError):
    """A signature file the index cannot represent (lookups keep querying the file itself)."""


def index_folder(source: Path) -> Path:
    """Where the feature index of signature file `source` (as it is now) lives."""
    key = f"{INDEX_VERSION}\0{file_identity(source)}"
    return cache_root() / "feature-index" / hashlib.sha256(key.encode()).hexdigest()


def _list_parts(column) -> tuple[np.ndarray, np.ndarray]:
    """(per-row lengths, flat values) of a list column without nulls."""
    array = column.combine_chunks()
    if array.null_count:
        raise FeatureIndexError("a list column holds nulls")
    offsets = array.offsets.to_numpy()
    return np.diff(offsets).astype(np.int32), array.flatten().to_numpy(zero_copy_only=False)


def _string_parts(column) -> tuple[np.ndarray, bytes]:
    """(per-row byte lengths, concatenated UTF-8) of a string column without nulls."""
    import pyarrow.compute as pc

    array = column.combine_chunks()
    if array.null_count:
        raise FeatureIndexError("feature_str holds nulls")
    lengths = pc.binary_length(array).to_numpy().astype(np.int64)
    offsets = np.frombuffer(array.buffers()[1], np.int32, len(array) + 1, array.offset * 4)
    return lengths, array.buffers()[2].to_pybytes()[offsets[0] : offsets[-1]]


def _interleaved_lists(n_top: np.ndarray, n_bottom: np.ndarray, parts: list[np.ndarray]) -> bytes:
    """Each row's `[top_ids | top_scores | bottom_ids | bottom_scores]`, rows one after another."""
    top_ids, top_scores, bottom_ids, bottom_scores = (p.view(np.uint32) for p in parts)
    rows = len(n_top)
    if rows and (n_top == n_top[0]).all() and (n_bottom == n_bottom[0]).all():  # the usual case: one k per row group
        a, b = int(n_top[0]), int(n_bottom[0])
        blocks = [
            top_ids.reshape(rows, a),
            top_scores.reshape(rows, a),
            bottom_ids.reshape(rows, b),
            bottom_scores.reshape(rows, b),
        ]
        return np.concatenate(blocks, axis=1).tobytes()
    top_at, bottom_at = np.concatenate([[0], np.cumsum(n_top)]), np.concatenate([[0], np.cumsum(n_bottom)])
    out = []
    for r in range(rows):
        t, b = slice(top_at[r], top_at[r + 1]), slice(bottom_at[r], bottom_at[r + 1])
        out += [top_ids[t], top_scores[t], bottom_ids[b], bottom_scores[b]]
    return np.concatenate(out).tobytes() if out else b""


def build_feature_index(source: Path) -> Path:
    """Write the feature index of signature file `source` (if missing) and return its folder."""
    import pyarrow.parquet as pq

    target = index_folder(source)
    if (target / "meta.json").is_file():
        return target
    temporary = target.with_name(f".tmp-{os.getpid()}-{threading.get_ident()}-{target.name}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    lenses: dict[str, int] = {}
    dictionaries: dict[int, tuple[str, int]] = {}
    arrays: dict[str, list[np.ndarray]] = {name: [] for name in _ARRAYS if name not in ("rows",)}
    list_end, string_end = 0, 0
    try:
        parquet = pq.ParquetFile(source)
        missing = [c for c in COLUMNS if c not in parquet.schema_arrow.names]
        if missing:
            raise FeatureIndexError(f"{source}: no column(s) {', '.join(missing)}")
        with open(temporary / "lists.bin", "wb") as lists, open(temporary / "strings.bin", "wb") as strings:
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group, columns=list(COLUMNS), use_threads=False)
                if not table.num_rows:
                    continue
                lens_names = table.column("lens").to_pylist()
                for name in dict.fromkeys(lens_names):
                    lenses.setdefault(name, len(lenses))
                if len(lenses) > 255:
                    raise FeatureIndexError(f"{source}: more than 255 lenses")
                index = table.column("dictionary_index").to_numpy()
                names, layers = table.column("dictionary").to_pylist(), table.column("layer").to_numpy()
                for row in np.unique(index, return_index=True)[1]:
                    dictionaries.setdefault(int(index[row]), (names[row], int(layers[row])))
                if any(dictionaries[int(i)] != (name, int(layer)) for i, name, layer in zip(index, names, layers)):
                    raise FeatureIndexError(f"{source}: one dictionary index with several names or layers")
                feature = table.column("feature").to_numpy()
                if feature.min() < 0 or feature.max() >= 1 << _FEATURE_BITS:
                    raise FeatureIndexError(f"{source}: feature ids outside [0, 2^{_FEATURE_BITS})")
                arrays["keys"].append((index.astype(np.int64) << _FEATURE_BITS) | feature)
                arrays["lens"].append(np.asarray([lenses[n] for n in lens_names], np.uint8))
                variance = table.column("relative_variance").combine_chunks()
                arrays["relative_variance_valid"].append(
                    ~np.asarray(variance.is_null().to_numpy(zero_copy_only=False), bool)
                )
                arrays["relative_variance"].append(variance.fill_null(0.0).to_numpy().astype(np.float32))
                n_top, top_ids = _list_parts(table.column("top_ids"))
                n_top_scores, top_scores = _list_parts(table.column("top_scores"))
                n_bottom, bottom_ids = _list_parts(table.column("bottom_ids"))
                n_bottom_scores, bottom_scores = _list_parts(table.column("bottom_scores"))
                if not (np.array_equal(n_top, n_top_scores) and np.array_equal(n_bottom, n_bottom_scores)):
                    raise FeatureIndexError(f"{source}: lists of ids and scores of different lengths")
                parts = [
                    top_ids.astype(np.int32),
                    top_scores.astype(np.float32),
                    bottom_ids.astype(np.int32),
                    bottom_scores.astype(np.float32),
                ]
                lists.write(_interleaved_lists(n_top, n_bottom, parts))
                arrays["n_top"].append(n_top)
                arrays["n_bottom"].append(n_bottom)
                arrays["list_offsets"].append(
                    list_end + 8 * np.cumsum(n_top + n_bottom, dtype=np.int64) - 8 * (n_top + n_bottom)
                )
                list_end += 8 * int((n_top + n_bottom).sum())
                lengths, text = _string_parts(table.column("feature_str"))
                strings.write(text)
                arrays["string_offsets"].append(string_end + np.cumsum(lengths) - lengths)
                string_end += len(text)
        merged = {name: np.concatenate(parts) if parts else np.zeros(0, np.int64) for name, parts in arrays.items()}
        merged["list_offsets"] = np.append(merged["list_offsets"], list_end).astype(np.int64)
        merged["string_offsets"] = np.append(merged["string_offsets"], string_end).astype(np.int64)
        order = np.argsort(merged["keys"], kind="stable")
        merged["rows"], merged["keys"] = order.astype(np.int64), merged["keys"][order]
        for name, array in merged.items():
            np.save(temporary / f"{name}.npy", array)
        meta = {
            "version": INDEX_VERSION,
            "source": str(source),
            "rows": int(len(order)),
            "lenses": list(lenses),
            "dictionaries": {str(i): list(v) for i, v in dictionaries.items()},
        }
        (temporary / "meta.json").write_text(json.dumps(meta))
        try:
            temporary.rename(target)
        except OSError:  # another process finished the same index first
            shutil.rmtree(temporary, ignore_errors=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return target


class FeatureIndex:
    """An index folder opened for reading; `rows` answers one feature as the file's rows would."""

    def __init__(self, folder: Path):
        self.folder = folder
        meta = json.loads((folder / "meta.json").read_text())
        self._lenses = meta["lenses"]
        self._dictionaries = {int(i): (name, layer) for i, (name, layer) in meta["dictionaries"].items()}
        self._arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in _ARRAYS}

    def rows(self, dictionary_index: int, feature: int) -> list[dict]:
        """The rows of `(dictionary_index, feature)`, one per lens, with the columns a feature
        lookup reads (`lens, dictionary, dictionary_index, layer, feature, feature_str,
        relative_variance, top_ids, top_scores, bottom_ids, bottom_scores`)."""
        a = self._arrays
        key = (dictionary_index << _FEATURE_BITS) | feature
        lo, hi = np.searchsorted(a["keys"], key, "left"), np.searchsorted(a["keys"], key, "right")
        if lo == hi:
            return []
        name, layer = self._dictionaries[dictionary_index]
        out = []
        lists_fd, strings_fd = (
            os.open(self.folder / "lists.bin", os.O_RDONLY),
            os.open(self.folder / "strings.bin", os.O_RDONLY),
        )
        try:
            for row in a["rows"][lo:hi]:
                n_top, n_bottom = int(a["n_top"][row]), int(a["n_bottom"][row])
                start, stop = int(a["list_offsets"][row]), int(a["list_offsets"][row + 1])
                lists = os.pread(lists_fd, stop - start, start)
                ids_top = np.frombuffer(lists, np.int32, n_top, 0)
                scores_top = np.frombuffer(lists, np.float32, n_top, 4 * n_top)
                ids_bottom = np.frombuffer(lists, np.int32, n_bottom, 8 * n_top)
                scores_bottom = np.frombuffer(lists, np.float32, n_bottom, 8 * n_top + 4 * n_bottom)
                s0, s1 = int(a["string_offsets"][row]), int(a["string_offsets"][row + 1])
                out.append(
                    {
                        "lens": self._lenses[a["lens"][row]],
                        "dictionary": name,
                        "dictionary_index": dictionary_index,
                        "layer": layer,
                        "feature": feature,
                        "feature_str": os.pread(strings_fd, s1 - s0, s0).decode(),
                        "relative_variance": float(a["relative_variance"][row])
                        if a["relative_variance_valid"][row]
                        else None,
                        "top_ids": ids_top.tolist(),
                        "top_scores": scores_top.tolist(),
                        "bottom_ids": ids_bottom.tolist(),
                        "bottom_scores": scores_bottom.tolist(),
                    }
                )
        finally:
            os.close(lists_fd)
            os.close(strings_fd)
        return out
