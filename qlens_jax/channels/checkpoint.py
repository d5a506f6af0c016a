"""The fitted maps as an Orbax checkpoint (`StandardCheckpointer`) plus `maps.json` naming the rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qlens_jax.channels.analysis import ChannelResults
from qlens_jax.channels.fit import LowRankMap
from qlens_jax.channels.labels import map_labels
from qlens_jax.globs import unglobbed


def save_maps(results: ChannelResults, directory: str | Path) -> Path:
    """The maps of every method (stacked `A [maps, r, d]`, `B [maps, d, r]`) and each source's
    sampled feature ids, as an Orbax checkpoint, plus `maps.json` naming the rows."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty")
    arrays = {
        method: {
            "A": np.stack([m.A for m in f.maps]).astype(np.float32),
            "B": np.stack([m.B for m in f.maps]).astype(np.float32),
        }
        for method, f in results.fits.items()
        if f.maps
    }
    arrays["feature_ids"] = {str(i): np.asarray(s.feature_ids, np.int64) for i, s in enumerate(results.data.sources)}
    with unglobbed(directory) as literal, ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(literal / "arrays", arrays)  # Orbax globs below the folder: `unglobbed`
    meta = {
        "rank": results.rank,
        "methods": [m for m in results.fits if results.fits[m].maps],
        "maps": [
            {"label": label, "source": p.source, "source_layer": p.source_layer, "destination": p.destination}
            for label, p in zip(map_labels(results), results.data.pairs)
        ],
        "sources": [{"name": s.name, "layer": s.layer, "write_point": s.write_point} for s in results.data.sources],
        "convention": "W = B @ A maps a query v to B @ (A @ v); rows of a batch: Y = X @ A.T @ B.T",
    }
    (directory / "maps.json").write_text(json.dumps(meta, indent=1))
    return directory


def load_maps(directory: str | Path) -> tuple[dict[str, list[LowRankMap]], dict, dict[int, np.ndarray]]:
    """`(maps per method, maps.json, feature ids per source)` of a `save_maps` checkpoint."""
    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta = json.loads((directory / "maps.json").read_text())
    with unglobbed(directory) as literal, ocp.StandardCheckpointer() as checkpointer:
        arrays = checkpointer.restore(literal / "arrays")
    maps = {
        m: [LowRankMap(np.asarray(a), np.asarray(b)) for a, b in zip(arrays[m]["A"], arrays[m]["B"])]
        for m in meta["methods"]
    }
    ids = {int(k): np.asarray(v) for k, v in arrays["feature_ids"].items()}
    return maps, meta, ids
