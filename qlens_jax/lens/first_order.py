"""First-order (single-hop) transports, grouped into per-block terms.

`m = v + sum over modules after the write point of A_m v` (value side) and
`w = k + sum over modules before the read point of C_m k` (key side), each `A_m` the
module's mean Jacobian at its own hidden state (docs/definitions.md section 1). Terms are grouped by
block: term 0 is the direct/identity term, then one term per block that contributes.
Both paths return the same grouping; the dense one as `[T, d, w]` operators (`X @ op.T`),
the per-feature one as `[n, T, d]` vectors.

A dictionary on a module output first takes the one hop that reaches the residual
(docs/definitions.md section 1b): a key vector at `attn_out` / `mlp_out` / `z` goes back through the
module that produces the site (`u = mean_pos J^T k`), a value vector at `z` through the
output projection and any post-norm (`v = mean_pos J_out u`); term 0 is then that hop
instead of the identity, and every later term is applied to its result.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from qlens_jax.lens import per_feature, points as pts
from qlens_jax.lens.chunks import ChunkPlan, iter_token_chunks
from qlens_jax.lens.operators import TransportOperators
from qlens_jax.lens.points import DictionaryPoints, Module


def contributing_modules(points: DictionaryPoints, side: str, n_layers: int) -> tuple[Module, ...]:
    """The modules whose single-hop terms enter `points`' first-order transport on `side`."""
    return points.value_modules(n_layers) if side == "value" else points.key_modules(n_layers)


def _by_block(modules: tuple[Module, ...], n_layers: int) -> dict[int, list[int]]:
    """Rows (`points.module_row`) of the contributing modules, grouped by block in order."""
    groups: dict[int, list[int]] = {}
    for module in modules:
        groups.setdefault(module.layer, []).append(pts.module_row(module, n_layers))
    return dict(sorted(groups.items()))


def hop_kind(points: DictionaryPoints, side: str) -> str | None:
    """Which first hop the dictionary's vectors take on `side`: "z" (through the output
    projection or the attention up to `z`), "module" (back through the module producing
    `attn_out` / `mlp_out`), or None (they start in the residual)."""
    if side == "value":
        return "z" if points.write.site == "z" else None
    if points.read.module is None:
        return None
    return "z" if points.read.site == "z" else "module"


def first_order_terms_dense(
    operators: TransportOperators, points: DictionaryPoints, side: str, n_layers: int, mask_seed: bool
) -> tuple[list[int], jnp.ndarray]:
    """Per-block first-order operators `[T, d, w]` (term 0 the identity, or the hop of a
    module-output dictionary), applied as `X @ op.T`."""
    modules = contributing_modules(points, side, n_layers)
    first_order = operators.first_order
    assert first_order is not None  # `check_operators`: the first-order sweep ran
    if side == "value":
        module_op = lambda m: first_order[m]
    else:
        # C_m k = mean_valid J_m^T (k seeded at every position), so X @ C_m^T = X @ A_all[m].
        source = first_order if mask_seed else operators.first_order_all
        assert source is not None
        module_op = lambda m: source[m].T
    groups = _by_block(modules, n_layers)
    d = first_order.shape[-1]
    kind = hop_kind(points, side)
    if kind is None:
        terms = [jnp.eye(d, dtype=jnp.float32)]
        terms += [sum(module_op(m) for m in rows) for rows in groups.values()]
        return list(groups), jnp.stack(terms)
    site = points.write if side == "value" else points.read
    if kind == "z":
        hop = operators.z_hop(side, site, mask_seed)
    else:
        assert site.module is not None  # `hop_kind`: a module's output
        hop = module_op(pts.module_row(site.module, n_layers))
    terms = [hop] + [sum(module_op(m) for m in rows) @ hop for rows in groups.values()]
    return list(groups), jnp.stack(terms)


def first_order_terms_per_feature(
    model, tokens, mask, plan: ChunkPlan, side: str, vectors, points: DictionaryPoints, n_layers: int, mask_seed: bool
) -> tuple[list[int], jnp.ndarray]:
    """Per-block first-order vectors `[n, T, d]` (term 0 the feature vector itself, or its
    hop for a module-output dictionary)."""
    kind = hop_kind(points, side)
    if kind is not None:
        vectors = _hop_per_feature(model, tokens, mask, plan, side, vectors, points, n_layers, mask_seed, kind)
    per_module = _module_means(model, tokens, mask, plan, side, vectors, mask_seed)
    modules = contributing_modules(points, side, n_layers)
    groups = _by_block(modules, n_layers)
    terms = [vectors]
    for rows in groups.values():
        terms.append(sum(per_module[:, m] for m in rows))
    return list(groups), jnp.stack(terms, axis=1)


def first_order_value_means(
    model, tokens, mask, plan: ChunkPlan, vectors, points: DictionaryPoints, n_layers: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean `[n, d]` and mean squared norm `[n]` over valid positions of the per-position
    first-order value vectors of a dictionary that writes to the residual (`hop_kind` None), for
    their relative variance."""
    rows = jnp.asarray(
        [pts.module_row(m, n_layers) for m in contributing_modules(points, "value", n_layers)], jnp.int32
    )
    total, total_sq = 0.0, 0.0
    for chunk_tokens, chunk_mask in iter_token_chunks(tokens, mask, plan.sequences_per_chunk):
        s, sq = per_feature.first_order_value_stats_chunk(
            model, jnp.asarray(chunk_tokens), jnp.asarray(chunk_mask), vectors, rows, plan.tangent_chunk
        )
        total, total_sq = total + s, total_sq + sq
    n = float(np.asarray(mask).sum())
    return np.asarray(total) / n, np.asarray(total_sq) / n


def _module_means(model, tokens, mask, plan: ChunkPlan, side: str, vectors, mask_seed: bool) -> jnp.ndarray:
    """Each module's single-hop term of each vector, mean over valid positions: `[n, modules, d]`."""
    total = 0.0
    for chunk_tokens, chunk_mask in iter_token_chunks(tokens, mask, plan.sequences_per_chunk):
        chunk_tokens, chunk_mask = jnp.asarray(chunk_tokens), jnp.asarray(chunk_mask)
        if side == "value":
            sums = per_feature.first_order_value_chunk(model, chunk_tokens, chunk_mask, vectors, plan.tangent_chunk)
        else:
            sums = per_feature.first_order_key_chunk(
                model, chunk_tokens, chunk_mask, vectors, plan.tangent_chunk, mask_seed
            )
        total = total + sums
    # an array: every request has at least one token chunk
    return total / float(np.asarray(mask).sum())  # pyright: ignore[reportReturnType]


def _hop_per_feature(
    model,
    tokens,
    mask,
    plan: ChunkPlan,
    side: str,
    vectors,
    points: DictionaryPoints,
    n_layers: int,
    mask_seed: bool,
    kind: str,
) -> jnp.ndarray:
    """The first hop of each module-output vector into the residual (`hop_kind`): `[n, d]`."""
    site = points.write if side == "value" else points.read
    if kind == "module":
        assert site.module is not None  # `hop_kind`: a module's output
        return _module_means(model, tokens, mask, plan, side, vectors, mask_seed)[
            :, pts.module_row(site.module, n_layers)
        ]
    total = 0.0
    for chunk_tokens, chunk_mask in iter_token_chunks(tokens, mask, plan.sequences_per_chunk):
        chunk_tokens, chunk_mask = jnp.asarray(chunk_tokens), jnp.asarray(chunk_mask)
        args = (model, chunk_tokens, chunk_mask, vectors, site.layer, plan.tangent_chunk)
        total = total + (
            per_feature.z_hop_value_chunk(*args) if side == "value" else per_feature.z_hop_key_chunk(*args, mask_seed)
        )
    # an array: every request has at least one token chunk
    return total / float(np.asarray(mask).sum())  # pyright: ignore[reportReturnType]
