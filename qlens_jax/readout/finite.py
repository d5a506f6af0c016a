"""The last guard of every readout: a NaN or infinite score stops the run, naming the feature.

The top-k lists hold every non-finite score of a row: `lax.top_k` ranks NaN above +inf, and
the bottom `k` are the top `k` of the negated row, so a row with any NaN or infinity shows one
in its top or bottom list. Checking those host arrays (already fetched) costs no device work
and no extra synchronization.
"""

from __future__ import annotations

import numpy as np

from qlens_jax.errors import NonFiniteScoreError

VECTORS = {"value": "W_dec row (value vector)", "key": "W_enc column (key vector)"}


def first_non_finite(arrays: dict[str, np.ndarray]) -> tuple[int, str, float] | None:
    """(row, array name, value) of the first row of any float array `[n, ...]` holding a NaN
    or an infinity, or None when all are finite."""
    found = None
    for name, array in arrays.items():
        array = np.asarray(array)
        if array.dtype.kind != "f" or array.size == 0:
            continue
        bad_rows = np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))
        if bad_rows.size and (found is None or bad_rows[0] < found[0]):
            row = array.reshape(len(array), -1)[bad_rows[0]]
            found = (int(bad_rows[0]), name, float(row[~np.isfinite(row)][0]))
    return found


def check_finite_scores(
    arrays: dict[str, np.ndarray], feature_ids, *, lens: str, side: str, dictionary: str, layer: int
) -> None:
    """Raise `NonFiniteScoreError` if a row of `arrays` (one row per feature of `feature_ids`)
    holds a NaN or an infinity, naming the lens, the dictionary and the feature."""
    found = first_non_finite(arrays)
    if found is None:
        return
    row, name, value = found
    feature = int(np.asarray(feature_ids)[row])
    raise NonFiniteScoreError(
        f"{lens} of dictionary {dictionary!r} (layer {layer}), feature {feature}: the readout gave a non-finite score "
        f"({name} holds {value}): the computation overflowed float32; check that feature's {VECTORS[side]} "
        "and the model's weights for huge values"
    )
