"""`qlens export`: a finished run as the reference implementation's `feature_analysis.jsonl`.

One file per lens, `<out>/<lens>/feature_analysis.jsonl`, one JSON object per feature in the
reference's order (sorted by layer, then feature), with its fields (docs/definitions.md section 7).
A lens is described by its parts (`qlens_jax.lens.lens_spec.Lens`; a spec such as
`value:identity:embed` by its own three parts); the six named lenses are:

    lens               feature_vector  stream_transition  readout
    logit_lens_value   value           identity           unembed
    logit_lens_key     key             identity           embed
    first_order_value  value           first_order        unembed
    first_order_key    key             first_order        embed_cosine_centered
    query_lens_value   value           full               unembed
    query_lens_key     key             full               embed_cosine_centered

`baseline` is our lens name. `stats` is an object of the statistics computed for the feature
(`relative_variance` with --stats; empty otherwise) for first-order and full transports, and
null for Logit Lens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc

from qlens_jax.errors import InputError
from qlens_jax.io.atomic import write_atomic
from qlens_jax.io.parquet import STAT_COLUMNS, read_table
from qlens_jax.io.rundir import open_finished
from qlens_jax.lens.lens_spec import parse_lens

SORT = [("layer", "ascending"), ("feature", "ascending"), ("dictionary_index", "ascending")]


def record(row: dict, feature_index: int) -> dict:
    """One line of feature_analysis.jsonl from one row of signatures.parquet."""
    lens = parse_lens(row["lens"])
    vector, transition, readout = lens.vector, lens.transition, lens.readout
    out = {
        "feature_index": feature_index,
        "feature_str": row["feature_str"],
        "feature_vector": vector,
        "stream_transition": transition,
        "readout": readout,
        "baseline": row["lens"],
        "layer": row["layer"],
        "top_tokens": row["top_tokens"],
        "bottom_tokens": row["bottom_tokens"],
        "top_ids": row["top_ids"],
        "bottom_ids": row["bottom_ids"],
        "stats": None if transition == "identity" else {k: row[k] for k in STAT_COLUMNS if row[k] is not None},
    }
    if transition == "first_order":
        out.update(
            layer_indices=row["layer_indices"],
            layer_top_tokens=row["layer_top_tokens"],
            layer_bottom_tokens=row["layer_bottom_tokens"],
            layer_top_ids=row["layer_top_ids"],
            layer_bottom_ids=row["layer_bottom_ids"],
            layer_energy_scores=row["layer_energy"],
        )
    return out


def export_jsonl(
    run_dir: str | Path, out: str | Path | None = None, lenses: str | None = None
) -> list[tuple[Path, int]]:
    """Write one feature_analysis.jsonl per lens; returns (path, rows) per file."""
    manifest, signatures = open_finished(run_dir)
    run_lenses = manifest["options"]["lenses"]
    chosen = run_lenses if lenses is None else [s.strip() for s in lenses.split(",") if s.strip()]
    missing = [lens for lens in chosen if lens not in run_lenses]
    if missing:
        raise InputError(f"--lenses {lenses}: the run did not compute {missing[0]!r} (it has {', '.join(run_lenses)})")
    table = read_table(signatures)
    out = Path(out) if out is not None else Path(run_dir) / "export"
    written = []
    for lens in chosen:
        rows = table.filter(pc.equal(table["lens"], lens)).sort_by(SORT)
        path = out / lens / "feature_analysis.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp: Path, rows=rows) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                index = 0
                for batch in rows.to_batches(max_chunksize=4096):
                    for row in batch.to_pylist():
                        f.write(json.dumps(record(row, index), ensure_ascii=False) + "\n")
                        index += 1

        write_atomic(path, write)
        written.append((path, rows.num_rows))
    return written
