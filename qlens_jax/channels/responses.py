"""Queries and module responses of the Subspace Channel analysis (docs/definitions.md section 6).

A query is the value vector `v` of a sampled feature of a source dictionary. Its response at
destination block `t` is the mean over valid positions of block `t`'s two residual modules'
Jacobians (attention and MLP, each at its own clean hidden state) applied to `v` broadcast to
every valid position, with nothing propagated through the blocks in between:

    y = R_t v,    R_t = A_{2t} + A_{2t+1}

where `A_m` is module `m`'s mean Jacobian, `TransportOperators.first_order[m]` (module 2b is
the attention of block b, 2b+1 its MLP). Responses of all features at once are one GEMM per
destination: `Y = V @ R_t.T`.

Destinations of a source are the blocks whose two modules both come after the point where the
dictionary writes: `t > s` for a dictionary writing `resid_post[s]` (SAEs on `resid_post` and
`mlp_out`, transcoders of MLP `s`), `t >= s` for one writing `resid_pre[s]`, and `t > s` for
`resid_mid[s]` (SAEs on `attn_out`; block `s`'s MLP alone is not a whole block and is left out).
A module output is added straight to the residual, so its value vectors are queries there as they
are. A `z` dictionary's value vectors live in the heads' output space, before the output
projection: they are no residual vectors, and the analysis refuses them (`check_sources`).
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from qlens_jax.lens.points import MODULE_KINDS, Module, dictionary_points, module_row, row
from qlens_jax.numerics import applies_precision


@dataclass(frozen=True)
class Source:
    """One source dictionary and its sampled features; `queries[i]` is feature `feature_ids[i]`'s value vector."""

    name: str
    layer: int
    write_point: int
    feature_ids: np.ndarray  # int64 [n]
    queries: np.ndarray  # float32 [n, d]

    @property
    def label(self) -> str:
        return f"{self.name}@L{self.layer}"


@dataclass(frozen=True)
class ChannelPair:
    """A (source, destination block) pair; `source` indexes the list of sources."""

    source: int
    source_layer: int
    destination: int

    @property
    def label(self) -> str:
        return f"{self.source_layer}->{self.destination}"


def destination_blocks(write_point: int, n_layers: int) -> list[int]:
    """Blocks `t` whose attention and MLP both come after `write_point` (a row, `points.row`)."""
    return [t for t in range(n_layers) if row(Module("attn", t).reads, n_layers) >= write_point]


def sample_features(value_vectors: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` distinct feature ids (all when the dictionary has fewer), sorted; features whose
    value vector is zero (dead or pruned) are never drawn: they have no direction."""
    alive = np.flatnonzero(np.linalg.norm(value_vectors, axis=1) > 0)
    if alive.size <= n:
        return alive.astype(np.int64)
    return np.sort(rng.choice(alive, size=n, replace=False)).astype(np.int64)


def check_sources(dictionaries) -> None:
    """Refuse, before any work, a dictionary whose value vectors are not residual vectors: one
    on `z` (the heads' outputs, `n_heads x head_dim` wide, before `W_O`), naming it."""
    from qlens_jax.dictionaries import refuse_cross_layer
    from qlens_jax.errors import InputError

    refuse_cross_layer(dictionaries, "the channel analysis")
    for d in dictionaries:
        if d.site_out == "z":
            raise InputError(
                f"dictionary {d.name!r} (layer {d.layer}) writes z, the heads' outputs before the attention's output "
                "projection: its value vectors are not residual vectors, so they have no module responses to map; "
                "the channel analysis takes dictionaries on residual points, attn_out, mlp_out and transcoders; drop it"
            )


def make_sources(dictionaries, n_layers: int, n_features: int, seed: int) -> list[Source]:
    """Sample `n_features` value vectors of each dictionary (one seeded generator, in order)."""
    check_sources(dictionaries)
    rng = np.random.default_rng(seed)
    sources = []
    for d in dictionaries:
        values = np.asarray(d.value_vectors(), np.float32)
        ids = sample_features(values, n_features, rng)
        write = row(dictionary_points(d.site_in, d.site_out, d.layer, n_layers).write, n_layers)
        sources.append(Source(d.name, d.layer, write, ids, values[ids]))
    return sources


def channel_pairs(sources: list[Source], n_layers: int) -> list[ChannelPair]:
    """Every (source, destination) pair, ordered by source then destination."""
    return [
        ChannelPair(i, s.layer, t) for i, s in enumerate(sources) for t in destination_blocks(s.write_point, n_layers)
    ]


def block_operator(first_order: Float[ArrayLike, "modules d d"], block: int) -> Float[Array, "d d"]:
    """`R_t = A_attn(t) + A_mlp(t)`, the first-order operator of block `t`, applied as `X @ R_t.T`."""
    n_layers = len(first_order) // len(MODULE_KINDS)
    return sum(first_order[module_row(Module(kind, block), n_layers)] for kind in MODULE_KINDS)


@jax.jit
def _apply(first_order, queries, blocks):
    ops = first_order[2 * blocks] + first_order[2 * blocks + 1]
    return jnp.einsum("nd,ted->tne", queries, ops)


@applies_precision
def module_responses(
    first_order: Float[ArrayLike, "modules d d"], queries: Float[ArrayLike, "n d"], blocks, precision: str = "float32"
) -> Float[Array, "t n d"]:
    """Responses `Y[k] = queries @ R_{blocks[k]}.T` of every query at every listed block
    (`precision`: how the products multiply, `qlens_jax.numerics`)."""
    blocks = jnp.asarray(np.asarray(blocks, np.int32))
    return _apply(jnp.asarray(first_order, jnp.float32), jnp.asarray(queries, jnp.float32), blocks)
