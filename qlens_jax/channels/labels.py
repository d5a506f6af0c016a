"""Names of a channel analysis's maps, shared by its tables, figures and checkpoint."""

from __future__ import annotations

from qlens_jax.channels.analysis import ChannelResults


def map_labels(results: ChannelResults) -> list[str]:
    """`"s->t"` per map; prefixed with the dictionary name when two sources share a layer."""
    data = results.data
    layers = [s.layer for s in data.sources]
    shared = len(set(layers)) < len(layers)
    return [
        (f"{data.sources[p.source].name}:" if shared else "") + f"{p.source_layer}->{p.destination}" for p in data.pairs
    ]
