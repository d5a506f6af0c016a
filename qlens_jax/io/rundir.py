"""The output folder of `qlens signatures` and what makes it resumable.

Layout of DIR:

    run.json              every input and option, content hashes, versions, plan, sessions
    sample.npy            the token sample (-1 at pads; usable as --token-sample)
    operators/            the dense transport operators (`save_operators`), once computed
    shards/*.parquet      one file per (lens, dictionary, feature chunk), as work finishes
    signatures.parquet    all shards in a fixed order, written last
    .lock                 held (flock) by the process working in DIR

`run.json` holds a fingerprint of everything that decides the output (content hashes of
weights and sample, and the options that change numbers or layout). A restart with the same
fingerprint continues: finished shards are kept, leftovers of a killed process removed. A
different fingerprint is refused, naming what differs.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from qlens_jax.errors import InputError
from qlens_jax.io.atomic import TEMP_PREFIX, remove_temporaries, write_json_atomic

RUN_JSON, SAMPLE, OPERATORS, SHARDS, SIGNATURES, LOCK = (
    "run.json",
    "sample.npy",
    "operators",
    "shards",
    "signatures.parquet",
    ".lock",
)


def check_writable(directory: Path) -> None:
    """Raise `InputError` unless `directory` exists and takes new files, or could be created."""
    directory = Path(directory).absolute()
    probe_in = directory
    while not probe_in.exists():
        probe_in = probe_in.parent
    if not probe_in.is_dir():
        raise InputError(f"--out {directory}: {probe_in} is not a directory")
    leftovers = (
        [p for p in directory.iterdir() if p.name != LOCK and not p.name.startswith(TEMP_PREFIX)]
        if probe_in == directory
        else []
    )
    if leftovers and not (directory / RUN_JSON).exists():
        raise InputError(
            f"--out {directory}: not empty and not a qlens run (no {RUN_JSON}); choose a new or empty folder"
        )
    probe = probe_in / f".qlens-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InputError(f"--out {directory}: cannot write in {probe_in} ({err.strerror})") from None


def _differences(old: dict, new: dict) -> list[str]:
    keys = sorted(set(old) | set(new))
    return [k for k in keys if old.get(k) != new.get(k)]


class RunDir:
    """An output folder opened for work (holds its lock until `close`)."""

    def __init__(self, path: Path, manifest: dict, resumed: bool, lock_fd: int):
        self.path = path
        self.manifest = manifest
        self.resumed = resumed
        self._lock_fd = lock_fd

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, manifest: dict) -> "RunDir":
        """Create DIR for a new run, or reopen it to continue the same run.

        `manifest["fingerprint_inputs"]` decides whether an existing run is the same run;
        on a match the stored manifest is kept (its plan is reused) and this session is
        appended to its sessions.
        """
        path = Path(path).absolute()
        check_writable(path)
        path.mkdir(parents=True, exist_ok=True)
        lock_fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock_fd)
            raise InputError(f"--out {path}: another qlens process is working in this folder") from None
        try:
            run_json = path / RUN_JSON
            if run_json.exists():
                stored = json.loads(run_json.read_text())
                old, new = stored.get("fingerprint_inputs", {}), json.loads(json.dumps(manifest["fingerprint_inputs"]))
                if stored.get("fingerprint") != manifest["fingerprint"]:
                    raise InputError(
                        f"--out {path}: holds a run with different inputs ({', '.join(_differences(old, new)) or 'fingerprint'}); "
                        "rerun with the same command to continue it, or choose a new --out folder"
                    )
                for directory in (path, path / SHARDS):  # only where this job writes (not export/)
                    if directory.is_dir():
                        remove_temporaries(directory)
                stored["sessions"] = stored.get("sessions", []) + manifest["sessions"]
                stored["command"] = manifest["command"]
                return cls(path, stored, True, lock_fd)
            write_json_atomic(run_json, manifest)
            return cls(path, manifest, False, lock_fd)
        except BaseException:
            os.close(lock_fd)
            raise

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- paths and state -----------------------------------------------------------------
    @property
    def shards(self) -> Path:
        directory = self.path / SHARDS
        directory.mkdir(exist_ok=True)
        return directory

    def shard_path(self, name: str) -> Path:
        return self.shards / f"{name}.parquet"

    @property
    def operators(self) -> Path:
        return self.path / OPERATORS

    @property
    def sample(self) -> Path:
        return self.path / SAMPLE

    @property
    def signatures(self) -> Path:
        return self.path / SIGNATURES

    def save(self) -> None:
        """Write the manifest (atomically)."""
        write_json_atomic(self.path / RUN_JSON, self.manifest)


def open_finished(path: str | Path) -> tuple[dict, Path]:
    """run.json and the signatures file of a finished run, or `InputError` saying what is missing."""
    path = Path(path)
    if not (path / RUN_JSON).is_file():
        raise InputError(f"{path}: not a qlens run folder (no {RUN_JSON})")
    manifest = json.loads((path / RUN_JSON).read_text())
    if manifest.get("status") != "complete" or not (path / SIGNATURES).is_file():
        raise InputError(
            f"{path}: the run is not finished (no {SIGNATURES}); rerun its `qlens signatures` command to complete it"
        )
    return manifest, path / SIGNATURES
