"""A run folder opened for reading only: its manifest, dictionaries and Parquet files.

A finished run is read from `signatures.parquet`; a run still in progress (or stopped) from
the shards finished so far (`shards/*.parquet`, temporaries of a live writer left out), listed
again on every query so that new shards show up. Only regular files are read (a FIFO or a
device among the shards would block a reader forever). Each file is checked before it is used,
once per version of it (`literal_paths.file_identity`): its Parquet footer reads, it has the
columns the server reads, and its row count is run.json's (a shard's, from its name, the
dictionary's feature count and the shard size); a file that fails is a `RunFileError` naming
it. Nothing is ever written into the folder.
"""

from __future__ import annotations

import json
import os
import re
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from qlens_jax.errors import InputError
from qlens_jax.io.atomic import TEMP_PREFIX
from qlens_jax.io.rundir import RUN_JSON, SHARDS, SIGNATURES
from qlens_jax.serve.errors import NotFoundError, RunFileError
from qlens_jax.serve.literal_paths import file_identity

_FEATURE_STR = re.compile(r"^\s*(?:Feature\s+)?(.+)/(\d+)/(\d+)\s*$")
_SHARD_NAME = re.compile(r"^(.+)\.d(\d{3,})\.c(\d{5,})\.parquet$")
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
)  # what the server reads


@dataclass(frozen=True)
class DictionaryEntry:
    """One dictionary of a run, as run.json records it (position = `dictionary_index`)."""

    index: int
    name: str
    layer: int
    d_sae: int
    source: str
    sha256: str
    site_in: str
    site_out: str
    features: int


class RunData:
    """The read-only view of a run folder that the server and the reverse lookup share."""

    def __init__(self, path: str | Path):
        path = Path(path).expanduser().absolute()
        if not path.is_dir():
            raise InputError(f"{path}: no such directory")
        run_json = path / RUN_JSON
        if not run_json.is_file():
            raise InputError(f"{path}: not a qlens run folder (no {RUN_JSON})")
        try:
            self.manifest = json.loads(run_json.read_text())
            entries = self.manifest["inputs"]["dictionaries"]
            self.dictionaries = [
                DictionaryEntry(
                    i,
                    e["name"],
                    int(e["layer"]),
                    int(e["d_sae"]),
                    e["source"],
                    e["sha256"],
                    e["site_in"],
                    e["site_out"],
                    int(e.get("features", e["d_sae"])),
                )
                for i, e in enumerate(entries)
            ]
            self.lenses = list(self.manifest["options"]["lenses"])
            self.shard_size = int(self.manifest["options"].get("shard_size") or 0)
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{run_json}: not a readable qlens run.json ({type(err).__name__}: {err})") from None
        self.path = path
        self._checked: dict[Path, str] = {}  # file -> the identity it had when it passed `_check`
        self._lock = threading.Lock()

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete" and (self.path / SIGNATURES).is_file()

    def parquet_files(self) -> list[Path]:
        """The files that hold the run's signatures now (listed again each time for a live run),
        each checked (`RunFileError` naming the first that fails); non-regular files left out."""
        if self.complete:
            listed = [self.path / SIGNATURES]
        else:
            shards = self.path / SHARDS
            listed = (
                sorted(p for p in shards.glob("*.parquet") if not p.name.startswith(TEMP_PREFIX))
                if shards.is_dir()
                else []
            )
        files = []
        for path in listed:
            try:
                status = os.stat(path)
            except FileNotFoundError:  # a live run assembled its shards: the next listing says what is left
                continue
            if stat.S_ISREG(status.st_mode):
                self._check(path, status)
                files.append(path)
        return files

    def check_files(self) -> list[Path]:
        """`parquet_files()`, for a start-up check: every file's footer, columns and row count now."""
        return self.parquet_files()

    def _check(self, path: Path, status: os.stat_result) -> None:
        identity = file_identity(path, status)
        if self._checked.get(path) == identity:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            with open(path, "rb") as f:
                parquet = pq.ParquetFile(f)
                rows, names = parquet.metadata.num_rows, parquet.schema_arrow.names
        except (OSError, pa.ArrowException) as err:
            raise RunFileError(path, f"not a readable Parquet file ({' '.join(str(err).split())})") from None
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise RunFileError(path, f"not a signature file of qlens: no column(s) {', '.join(missing)}")
        expected = self._expected_rows(path)
        if expected is not None and rows != expected:
            raise RunFileError(path, f"holds {rows} rows where run.json says {expected}")
        with self._lock:
            self._checked[path] = identity

    def _expected_rows(self, path: Path) -> int | None:
        """The row count run.json implies for `path` (None where it says nothing)."""
        if path.name == SIGNATURES:
            rows = self.manifest.get("outputs", {}).get(SIGNATURES, {}).get("rows")
            return int(rows) if isinstance(rows, int) else None
        match = _SHARD_NAME.match(path.name)
        if match is None or not self.shard_size:
            return None
        lens, index, chunk = match.group(1), int(match.group(2)), int(match.group(3))
        if lens not in self.lenses or index >= len(self.dictionaries):
            raise RunFileError(path, "not a shard of this run (its lens or dictionary is not in run.json)")
        features = self.dictionaries[index].features
        return max(0, min(self.shard_size, features - chunk * self.shard_size))

    def dictionary(self, name: str, option: str = "--dictionary") -> DictionaryEntry:
        """The dictionary named `name` (a name, `name/layer`, or its index); `option` names the
        option or parameter that gave it in the error (`NotFoundError`)."""
        for entry in self.dictionaries:
            if name in (entry.name, f"{entry.name}/{entry.layer}", str(entry.index)):
                return entry
        known = ", ".join(f"{e.name}/{e.layer}" for e in self.dictionaries)
        raise NotFoundError(f"{option} {name!r}: not a dictionary of this run (it has {known})")

    def parse_feature_str(self, text: str) -> tuple[DictionaryEntry, int] | None:
        """`Feature NAME/LAYER/ID` (or `NAME/LAYER/ID`) -> (dictionary, feature), None if no such."""
        match = _FEATURE_STR.match(text)
        if not match:
            return None
        name, layer, feature = match.group(1), int(match.group(2)), int(match.group(3))
        for entry in self.dictionaries:
            if entry.name == name and entry.layer == layer:
                return entry, feature
        return None

    def summary(self) -> dict:
        """What the page shows about the run."""
        model = self.manifest.get("inputs", {}).get("model", {})
        return {
            "model": model.get("source"),
            "status": "complete" if self.complete else self.manifest.get("status", "unknown"),
            "k": self.manifest.get("options", {}).get("k"),
            "sample": self.manifest.get("inputs", {}).get("sample", {}).get("shape"),
            "lenses": self.lenses,
            "dictionaries": [
                {"index": e.index, "name": e.name, "layer": e.layer, "d_sae": e.d_sae, "features": e.features}
                for e in self.dictionaries
            ],
            "command": " ".join(self.manifest.get("command", [])),
        }
