"""A run's dictionary rows, memory-mapped: value vectors (`W_dec` rows) and key vectors
(`W_enc` columns) as contiguous float32 row files, read chunk by chunk.

The dictionaries of a run come in many formats (some of them PyTorch pickles); the reverse
lookup reads the vectors the run really used. So the first use of a dictionary converts it
once, exactly as the run did (`converters.load_dictionaries`), checks its content hash against
run.json, and writes its rows to a cache outside the run folder (`$QLENS_CACHE_DIR`, default
`~/.cache/qlens`), keyed by that hash. The conversion runs in a child process, so a server's
memory stays at its chunk buffers whatever the size of the dictionary. Every later use maps
the cached files: pages are read as chunks are scored and released after each chunk, so the
resident memory of a reverse lookup over a million features stays small.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qlens_jax.errors import InputError
from qlens_jax.serve.errors import UnavailableError

CACHE_ENV = "QLENS_CACHE_DIR"
_BLOCK = 1 << 16  # rows per block when writing the cache


def cache_root() -> Path:
    """Where converted rows are kept: `$QLENS_CACHE_DIR`, else `~/.cache/qlens`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "qlens").expanduser().absolute()


class RowFile:
    """One `[n, d]` float32 `.npy` file, memory-mapped read-only; `read` copies a block of rows
    and gives the pages back, so they stay in the page cache but not in this process."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            )
            shape, fortran, dtype = read_header(f)
            self._offset = f.tell()
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if fortran or dtype != np.float32 or len(shape) != 2:
            raise InputError(f"{path}: not a C-ordered float32 [n, d] row file")
        self.shape = shape
        self._row_bytes = shape[1] * 4

    def __len__(self) -> int:
        return self.shape[0]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows `start .. stop - 1` as a new float32 array."""
        stop = min(stop, self.shape[0])
        begin = self._offset + start * self._row_bytes
        block = (
            np.frombuffer(self._map, np.float32, (stop - start) * self.shape[1], begin)
            .reshape(stop - start, self.shape[1])
            .copy()
        )
        page = mmap.PAGESIZE
        aligned = begin - begin % page
        self._map.madvise(mmap.MADV_DONTNEED, aligned, begin + (stop - start) * self._row_bytes - aligned)
        return block


@dataclass(frozen=True)
class DictionaryRows:
    """The cached rows of one dictionary and what the conversion told about it."""

    value: RowFile
    key: RowFile
    meta: dict  # name, layer, site_in, site_out, input_norm, d_sae, sha256

    def side(self, side: str) -> RowFile:
        return self.value if side == "value" else self.key


def rows_folder(sha256: str) -> Path:
    return cache_root() / "rows" / sha256


def open_rows(entry, model_path: str) -> DictionaryRows:
    """The rows of run.json dictionary `entry` (a `DictionaryEntry`), converting them first if
    the cache has none (in a child process; `InputError` if the source changed since the run)."""
    folder = rows_folder(entry.sha256)
    if not (folder / "meta.json").is_file():
        command = [
            sys.executable,
            "-m",
            "qlens_jax.serve.rows",
            entry.source,
            str(model_path),
            entry.name,
            str(entry.layer),
            entry.sha256,
            str(folder),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
            raise UnavailableError(
                lines[-1] if lines else f"converting dictionary {entry.name} failed (exit {result.returncode})"
            )
    meta = json.loads((folder / "meta.json").read_text())
    return DictionaryRows(RowFile(folder / "value.npy"), RowFile(folder / "key.npy"), meta)


def write_rows(source: str, model_path: str, name: str, layer: int, sha256: str, folder: Path) -> None:
    """Convert the dictionary (`name` at `layer`) of `source` as a run does, check its hash, and
    write its value and key rows into `folder` (complete or not at all)."""
    import converters
    from qlens_jax.dictionaries import refuse_cross_layer
    from qlens_jax.io.hashing import dictionary_hash

    model = converters.load_model(model_path)
    members = [d for d in converters.load_dictionaries([source], model) if d.name == name and d.layer == layer]
    if len(members) != 1:
        raise InputError(f"dictionary {source}: holds no dictionary {name!r} at layer {layer} (the run's)")
    (dictionary,) = members
    refuse_cross_layer(dictionary, "the reverse lookup")
    if dictionary_hash(dictionary) != sha256:
        raise InputError(
            f"dictionary {source}: its weights differ from the run's ({name}, layer {layer}); "
            "the reverse lookup needs the dictionaries the run used"
        )
    temporary = folder.with_name(f".tmp-{os.getpid()}-{folder.name}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for side, matrix, transposed in (("value", dictionary.W_dec, False), ("key", dictionary.W_enc, True)):
        n, d = (matrix.shape[1], matrix.shape[0]) if transposed else matrix.shape
        out = np.lib.format.open_memmap(temporary / f"{side}.npy", mode="w+", dtype=np.float32, shape=(n, d))
        for start in range(0, n, _BLOCK):
            block = matrix[:, start : start + _BLOCK].T if transposed else matrix[start : start + _BLOCK]
            out[start : start + _BLOCK] = np.asarray(block, np.float32)
        out.flush()
        del out
    meta = {
        "name": name,
        "layer": layer,
        "site_in": dictionary.site_in,
        "site_out": dictionary.site_out,
        "input_norm": dictionary.input_norm,
        "d_sae": dictionary.d_sae,
        "sha256": sha256,
        "source": source,
    }
    (temporary / "meta.json").write_text(json.dumps(meta))
    try:
        temporary.rename(folder)
    except OSError:  # another process finished the same conversion first
        shutil.rmtree(temporary, ignore_errors=True)


def main(argv: list[str]) -> int:
    """Child process: `python -m qlens_jax.serve.rows SOURCE MODEL NAME LAYER SHA256 FOLDER`."""
    from converters.errors import ConversionError
    from qlens_jax.dictionaries import DictionaryError

    source, model_path, name, layer, sha256, folder = argv
    Path(folder).parent.mkdir(parents=True, exist_ok=True)
    try:
        write_rows(source, model_path, name, int(layer), sha256, Path(folder))
    except (InputError, DictionaryError, ConversionError, OSError) as err:
        print(f"dictionary {source}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    import qlens_jax  # noqa: F401  (XLA flags before JAX starts)

    sys.exit(main(sys.argv[1:]))
