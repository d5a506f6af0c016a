"""The data embedded in the viewer: a finished run's signatures, compacted for the browser.

    {"title", "run": {...}, "dictionaries": {index: {"name", "layer"}}, "lenses": [...],
     "tokens": {id: display string} (only ids that appear),
     "features": [{"d": dictionary index, "f": feature, "s": feature_str, "layer": int,
                   "L": {lens: [top_ids, top_scores, bottom_ids, bottom_scores]}}]}

Features are in (layer, feature, dictionary) order; scores keep 4 significant digits.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from qlens_jax.io.parquet import read_table
from qlens_jax.io.rundir import open_finished

_COLUMNS = [
    "lens",
    "dictionary",
    "dictionary_index",
    "layer",
    "feature",
    "feature_str",
    "top_ids",
    "top_tokens",
    "top_scores",
    "bottom_ids",
    "bottom_tokens",
    "bottom_scores",
]


def _round(values: list[float]) -> list[float]:
    return [float(f"{v:.4g}") for v in values]


def viewer_data(run_dir: str | Path, title: str | None = None, layers=None) -> dict:
    """The embedded data of a finished run (only dictionaries at `layers`, when given)."""
    manifest, signatures = open_finished(run_dir)
    table = read_table(signatures).select(_COLUMNS)
    if layers is not None:
        table = table.filter(pc.is_in(table["layer"], pa.array(list(layers), pa.int32())))
    lenses = list(manifest["options"]["lenses"])
    tokens: dict[int, str] = {}
    features: dict[tuple[int, int], dict] = {}
    dictionaries: dict[int, dict] = {}
    for batch in table.to_batches(max_chunksize=4096):
        for row in batch.to_pylist():
            key = (row["dictionary_index"], row["feature"])
            dictionaries.setdefault(row["dictionary_index"], {"name": row["dictionary"], "layer": row["layer"]})
            entry = features.setdefault(
                key, {"d": key[0], "f": key[1], "s": row["feature_str"], "layer": row["layer"], "L": {}}
            )
            for side in ("top", "bottom"):
                tokens.update(zip(row[f"{side}_ids"], row[f"{side}_tokens"]))
            entry["L"][row["lens"]] = [
                row["top_ids"],
                _round(row["top_scores"]),
                row["bottom_ids"],
                _round(row["bottom_scores"]),
            ]
    ordered = sorted(features.values(), key=lambda e: (e["layer"], e["f"], e["d"]))
    model = manifest["inputs"]["model"]["source"]
    return {
        "title": title or f"Query Lens signatures: {model}",
        "run": {
            "model": model,
            "k": manifest["options"]["k"],
            "sample": manifest["inputs"]["sample"].get("shape"),
            "command": " ".join(manifest.get("command", [])),
        },
        "dictionaries": {str(i): dictionaries[i] for i in sorted(dictionaries)},
        "lenses": lenses,
        "tokens": {str(i): s for i, s in sorted(tokens.items())},
        "features": ordered,
    }
