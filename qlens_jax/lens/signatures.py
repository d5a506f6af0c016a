"""What `query_lens` returns: one `SignatureTable` per (lens, dictionary)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from qlens_jax.lens.lens_spec import PRESETS, parse_lens

LENSES = (
    "logit_lens_value",
    "logit_lens_key",
    "first_order_value",
    "first_order_key",
    "query_lens_value",
    "query_lens_key",
)
DEFAULT_LENSES = ("query_lens_value", "query_lens_key")


assert LENSES == tuple(PRESETS)


def lens_side(lens: str) -> str:
    """ "value" or "key": the dictionary vector `lens` (a name or spec) reads."""
    return parse_lens(lens).side


@dataclass
class SignatureTable:
    """Top-k / bottom-k tokens of every requested feature of one dictionary under one lens.

    First-order lenses also carry per-layer terms: `layer_indices[t]` is the block of term
    `t`; term 0 is the direct (value) or identity (key) term, labelled with the dictionary's
    layer. `layer_energy[f, t] = <m_t, m> / <m, m>`.
    """

    lens: str
    dictionary: str
    layer: int
    feature_ids: np.ndarray
    top_ids: np.ndarray
    top_scores: np.ndarray
    bottom_ids: np.ndarray
    bottom_scores: np.ndarray
    stats: dict[str, np.ndarray] = field(default_factory=dict)
    layer_indices: np.ndarray | None = None
    layer_top_ids: np.ndarray | None = None
    layer_top_scores: np.ndarray | None = None
    layer_bottom_ids: np.ndarray | None = None
    layer_bottom_scores: np.ndarray | None = None
    layer_energy: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.feature_ids)


class Signatures(list):
    """A list of `SignatureTable`s with lookup by lens and dictionary name."""

    def get(self, lens: str, dictionary: str | None = None) -> SignatureTable:
        for table in self:
            if table.lens == lens and (dictionary is None or table.dictionary == dictionary):
                return table
        raise KeyError(f"no signatures for lens {lens!r}" + (f" and dictionary {dictionary!r}" if dictionary else ""))
