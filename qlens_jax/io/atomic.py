"""Files that appear under their final name only when complete.

Everything is written to a temporary name in the same directory (prefix `TEMP_PREFIX`),
flushed and fsynced, then moved into place with `os.replace` (atomic on POSIX), and the
directory entry is fsynced too. A process killed at any moment leaves at most a temporary
file, which `remove_temporaries` clears on the next start.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

TEMP_PREFIX = ".tmp-"


def temporary_path(final: Path) -> Path:
    """A fresh temporary name next to `final` (unique per process)."""
    return final.with_name(f"{TEMP_PREFIX}{os.getpid()}-{final.name}")


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for root, _, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb+") as f:
                os.fsync(f.fileno())
        fsync_directory(Path(root))


def publish(temporary: Path, final: Path) -> None:
    """Move a complete file or directory to its final name, durably."""
    if temporary.is_dir():
        _fsync_tree(temporary)
    else:
        with open(temporary, "rb+") as f:
            os.fsync(f.fileno())
    os.replace(temporary, final)
    fsync_directory(final.parent)


def write_atomic(final: Path, write: Callable[[Path], None], before_publish: Callable[[], None] | None = None) -> Path:
    """Call `write(temporary_path)`, then publish the result as `final`."""
    final = Path(final)
    temporary = temporary_path(final)
    try:
        write(temporary)
        if before_publish is not None:
            before_publish()
        publish(temporary, final)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary) if temporary.is_dir() else temporary.unlink()
    return final


def write_bytes_atomic(final: Path, data: bytes) -> Path:
    return write_atomic(final, lambda p: p.write_bytes(data))


def write_json_atomic(final: Path, obj) -> Path:
    text = json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n"
    return write_bytes_atomic(final, text.encode("utf-8"))


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete what killed processes left behind in `directory` (not below it): files and
    folders named `TEMP_PREFIX*`."""
    removed = []
    for path in sorted(Path(directory).glob(f"{TEMP_PREFIX}*")):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        removed.append(path)
    return removed
