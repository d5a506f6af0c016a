"""Paths taken literally by libraries that read them as glob patterns.

Orbax finds the parts of a checkpoint it writes by globbing below the checkpoint's folder, so a
folder whose path holds `[`, `*` or `?` (`runs/run[1]`) is read as a pattern: the parts are not
found (or another folder's are), and the saved checkpoint cannot be opened. `unglobbed` hands
such a library a link to the folder from a fresh temporary folder whose path holds no pattern
character. (DuckDB, which globs every path it reads, gets links to files:
`qlens_jax.serve.literal_paths`.)
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qlens_jax.errors import InputError

GLOB_CHARACTERS = re.compile(r"[][*?{}\\]")  # what a glob (DuckDB's, Python's, TensorStore's) could read as a pattern


def plain_temporary_folder(prefix: str) -> Path:
    """A new temporary folder whose path holds no `GLOB_CHARACTERS` (`InputError` if TMPDIR has them)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    if GLOB_CHARACTERS.search(str(folder)):
        shutil.rmtree(folder, ignore_errors=True)
        raise InputError(
            f"{folder}: the temporary folder's path holds a glob character ([ ] * ? {{ }} \\); "
            "set TMPDIR to a plain folder"
        )
    return folder


@contextlib.contextmanager
def unglobbed(directory: str | Path) -> Iterator[Path]:
    """`directory` (made if missing) as a path without glob characters: itself where it has
    none, else a link to it in a temporary folder (removed after; the link, never the folder)."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    if not GLOB_CHARACTERS.search(str(directory)):
        yield directory
        return
    folder = plain_temporary_folder("qlens-link-")
    try:
        link = folder / "folder"
        os.symlink(directory, link, target_is_directory=True)
        yield link
    finally:
        shutil.rmtree(folder, ignore_errors=True)
