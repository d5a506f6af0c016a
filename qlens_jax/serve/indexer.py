"""Builds the indexes of a run's signature files in a background thread, file by file as they
appear: the feature index (`feature_index`, for feature lookups) and then the token index
(`token_index`, for token search) of each. Queries use an index where it is ready and read the
file itself where it is not, so answers never wait for an index.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import duckdb

from qlens_jax.serve.errors import RunFileError
from qlens_jax.serve.feature_index import build_feature_index, index_folder
from qlens_jax.serve.token_index import build_index, index_path

BUILDERS: dict[str, Callable[[Path], Path]] = {"feature": build_feature_index, "token": build_index}
WHERE: dict[str, Callable[[Path], Path]] = {
    "feature": index_folder,
    "token": index_path,
}  # the index of a file as it is now


class Indexer:
    """The indexes (`kinds`, built in that order for each file) of the files `list_files()` names."""

    def __init__(
        self, list_files: Callable[[], list[Path]], kinds: tuple[str, ...] = tuple(BUILDERS), poll_seconds: float = 2.0
    ):
        unknown = set(kinds) - set(BUILDERS)
        if unknown:
            raise ValueError(f"index kinds {sorted(unknown)}: choose from {sorted(BUILDERS)}")
        self._list_files, self._kinds, self._poll = list_files, kinds, poll_seconds
        self._ready: dict[str, dict[Path, Path]] = {kind: {} for kind in kinds}
        self._failed: dict[str, set[tuple]] = {
            kind: set() for kind in kinds
        }  # (path, size, mtime): a rewritten file is tried again
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: dict[str, str | None] = {kind: None for kind in kinds}

    def split(self, files: list[Path], kind: str) -> tuple[list[Path], list[Path]]:
        """(the `kind` indexes of the files that have one, the files still without)."""
        indexed, missing = [], []
        for f in files:
            index = self._current(kind, f)
            (indexed.append(index) if index is not None else missing.append(f))
        return indexed, missing

    def _current(self, kind: str, source: Path) -> Path | None:
        """The `kind` index of `source` if it is built and of the file as it is now (not rewritten since)."""
        index = self._ready.get(kind, {}).get(source)
        try:
            return index if index is not None and index == WHERE[kind](source) else None
        except OSError:  # the file is gone
            return None

    def index_all(self) -> None:
        """Index every current file now (in this thread); a file whose index cannot be built is
        recorded in `errors` and not tried again."""
        for source in self._list_files():
            for kind in self._kinds:
                if self._stop.is_set():
                    return
                if self._current(kind, source) is not None:
                    continue
                try:
                    stat = source.stat()
                except OSError:  # gone (a live run assembled its shards): the next listing says what is left
                    continue
                version = (source, stat.st_size, stat.st_mtime_ns)
                if version in self._failed[kind]:
                    continue
                try:
                    self._ready[kind][source] = BUILDERS[kind](source)
                except (duckdb.Error, OSError, ValueError) as err:  # queries keep reading the file itself
                    self._failed[kind].add(version)
                    self.errors[kind] = f"{source.name}: {' '.join(str(err).split())}"

    def progress(self, kind: str) -> dict:
        files = self._list_files()
        return {
            "files": len(files),
            "indexed": sum(1 for f in files if self._current(kind, f) is not None),
            "error": self.errors[kind],
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.index_all()
            except RunFileError as err:  # a file that no longer reads: requests answer 503 naming it; try again later
                self.errors = {kind: str(err) for kind in self._kinds}
            self._stop.wait(self._poll)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="qlens-index", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
