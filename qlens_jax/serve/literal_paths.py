"""Files named by what they are, and handed to DuckDB literally.

DuckDB reads every path it is given as a glob pattern, in a list too: `[`, `*` and `?` match,
and a backslash escapes, so the files of a run folder `runs/run[1]` would be read from
`runs/run1`. DuckDB therefore never sees the path of a run's file (or of an index in a cache
that could be anywhere): it reads a symbolic link to the file in a private folder of this
process (removed at exit), named by the file's identity (`file_identity`: its absolute path,
device, inode, size and modification time). A file that changes gets a new link, so DuckDB's
footer cache never answers for an older version of it.

The indexes of a file are keyed by the same identity (`feature_index`, `token_index`).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import threading
from pathlib import Path

from qlens_jax.globs import plain_temporary_folder


def file_identity(path: Path, stat: os.stat_result | None = None) -> str:
    """The file at `path` as it is now: absolute path, device, inode, size, modification time (ns).
    (Checked on every query: one `stat`, no path resolution.)"""
    stat = os.stat(path) if stat is None else stat
    return f"{os.path.abspath(path)}\0{stat.st_dev}\0{stat.st_ino}\0{stat.st_size}\0{stat.st_mtime_ns}"


class _LinkFolder:
    """The private folder of links (made on first use)."""

    def __init__(self):
        self._folder: Path | None = None
        self._lock = threading.Lock()

    def folder(self) -> Path:
        with self._lock:
            if self._folder is None:
                folder = plain_temporary_folder("qlens-duckdb-")
                atexit.register(shutil.rmtree, folder, True)
                self._folder = folder
            return self._folder

    def link(self, path: Path) -> str:
        digest = hashlib.sha256(file_identity(path).encode()).hexdigest()
        link = self.folder() / f"{digest}{''.join(c for c in Path(path).suffix if c.isalnum() or c == '.')}"
        if not os.path.islink(link):
            try:
                os.symlink(Path(path).absolute(), link)
            except FileExistsError:  # another thread made the same link
                pass
        return str(link)


_LINKS = _LinkFolder()


def duckdb_path(path: str | Path) -> str:
    """A path that DuckDB reads as exactly the file at `path` (as it is now), never as a pattern."""
    return _LINKS.link(Path(path))


def duckdb_paths(paths: list[Path]) -> list[str]:
    return [duckdb_path(p) for p in paths]
