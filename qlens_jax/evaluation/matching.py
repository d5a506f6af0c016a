"""How a lens's token set is compared with tokens found by activation or steering.

`"ids"` (default): token ids are compared. `"strings"`: the decoded strings are compared after
turning the tokenizer's space/newline markers (SentencePiece's `▁` and GPT-2's `Ġ` into a
space, `Ċ` into a newline), exactly as the authors' `util.normalize_token` does: nothing is
stripped, so `" cat"` and `"cat"` are different tokens. `"stripped"` also strips surrounding
whitespace, so that they match (a looser rule of this project, not the paper's). Case is kept.
"""

from __future__ import annotations

import numpy as np

from qlens_jax.errors import InputError

MATCHES = ("ids", "strings", "stripped")
STRING_MATCHES = ("strings", "stripped")
# The authors' markers (util.py: _SP_SPACE, _BPE_SPACE, _BPE_NEWLINE), in their order.
_MARKERS = {"▁": " ", "Ġ": " ", "Ċ": "\n"}


def normalize_token(text: str, strip: bool = False) -> str:
    """`text` with the space/newline markers replaced (the authors' `normalize_token`), and with
    `strip`, surrounding whitespace removed."""
    for marker, plain in _MARKERS.items():
        text = text.replace(marker, plain)
    return text.strip() if strip else text


def comparison_keys(ids: np.ndarray, match: str, vocab: np.ndarray | None) -> np.ndarray:
    """What is compared for each id: the id itself, or its normalized string (object array).

    Negative ids (unfilled slots) map to keys that match nothing.
    """
    ids = np.asarray(ids)
    if match == "ids":
        return ids.astype(np.int64)
    if match not in STRING_MATCHES:
        raise InputError(f"match {match!r}: choose from {', '.join(MATCHES)}")
    if vocab is None:
        raise InputError(f"match={match!r} needs the vocabulary's display strings (vocab)")
    normalized = np.asarray([normalize_token(str(s), strip=match == "stripped") for s in vocab], dtype=object)
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
