"""A run folder opened for reading only: its manifest, dictionaries and Parquet files.

A finished run is read from `signatures.parquet`; a run still in progress (or stopped) from
the shards finished so far (`shards/*.parquet`, temporaries of a live writer left out), listed
again on every query so that new shards show up. Nothing is ever written into the folder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from qlens_jax.errors import InputError
from qlens_jax.io.atomic import TEMP_PREFIX
from qlens_jax.io.rundir import RUN_JSON, SHARDS, SIGNATURES

_FEATURE_STR = re.compile(r"^\s*(?:Feature\s+)?(.+)/(\d+)/(\d+)\s*$")


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
                DictionaryEntry(i, e["name"], int(e["layer"]), int(e["d_sae"]), e["source"], e["sha256"], e["site_in"], e["site_out"],
                                int(e.get("features", e["d_sae"])))
                for i, e in enumerate(entries)
            ]
            self.lenses = list(self.manifest["options"]["lenses"])
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(f"{run_json}: not a readable qlens run.json ({type(err).__name__}: {err})") from None
        self.path = path

    @property
    def complete(self) -> bool:
        return self.manifest.get("status") == "complete" and (self.path / SIGNATURES).is_file()

    def parquet_files(self) -> list[Path]:
        """The files that hold the run's signatures now (re-read each time for a live run)."""
        if self.complete:
            return [self.path / SIGNATURES]
        shards = self.path / SHARDS
        if not shards.is_dir():
            return []
        return sorted(p for p in shards.glob("*.parquet") if not p.name.startswith(TEMP_PREFIX))

    def dictionary(self, name: str) -> DictionaryEntry:
        """The dictionary named `name` (a name, `name/layer`, or its index)."""
        for entry in self.dictionaries:
            if name in (entry.name, f"{entry.name}/{entry.layer}", str(entry.index)):
                return entry
        known = ", ".join(f"{e.name}/{e.layer}" for e in self.dictionaries)
        raise InputError(f"--dictionary {name!r}: not a dictionary of this run (it has {known})")

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
            "dictionaries": [{"index": e.index, "name": e.name, "layer": e.layer, "d_sae": e.d_sae, "features": e.features}
                             for e in self.dictionaries],
            "command": " ".join(self.manifest.get("command", [])),
        }
