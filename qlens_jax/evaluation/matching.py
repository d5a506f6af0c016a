"""How a lens's token set is compared with tokens found by activation or steering.

`"ids"` (default): token ids are compared. `"strings"`: the decoded strings are compared after
normalizing the tokenizer's space/newline markers (GPT-2's `Ġ`/`Ċ`, SentencePiece's `▁`) to
plain whitespace and stripping surrounding whitespace, so `" cat"` and `"cat"` match (the
reference implementation compares decoded strings this way). Case is kept.
"""

from __future__ import annotations

import numpy as np

MATCHES = ("ids", "strings")
_MARKERS = {"Ġ": " ", "Ċ": "\n", "▁": " ", "ĉ": "\t"}


def normalize_token(text: str) -> str:
    for marker, plain in _MARKERS.items():
        text = text.replace(marker, plain)
    return text.strip()


def comparison_keys(ids: np.ndarray, match: str, vocab: np.ndarray | None) -> np.ndarray:
    """What is compared for each id: the id itself, or its normalized string (object array).

    Negative ids (unfilled slots) map to keys that match nothing.
    """
    ids = np.asarray(ids)
    if match == "ids":
        return ids.astype(np.int64)
    if match != "strings":
        raise ValueError(f"match {match!r}: choose from {', '.join(MATCHES)}")
    if vocab is None:
        raise ValueError("match='strings' needs the vocabulary's display strings (vocab)")
    normalized = np.asarray([normalize_token(str(s)) for s in vocab], dtype=object)
    keys = np.empty(ids.shape, dtype=object)
    flat = ids.reshape(-1)
    keys.reshape(-1)[:] = [normalized[i] if i >= 0 else None for i in flat]
    return keys


def membership(items: np.ndarray, sets: np.ndarray) -> np.ndarray:
    """`[F, n]` whether `items[f, j]` is in `sets[f, :]` (None never matches)."""
    items, sets = np.asarray(items), np.asarray(sets)
    out = np.zeros(items.shape, bool)
    for f in range(items.shape[0]):
        members = {s for s in sets[f].tolist() if s is not None and not (isinstance(s, (int, np.integer)) and s < 0)}
        out[f] = [x in members for x in items[f].tolist()]
    return out
