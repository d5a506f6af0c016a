"""First-order (single-hop) transports, grouped into per-block terms.

`m = v + sum over modules after the write point of A_m v` (value side) and
`w = k + sum over modules before the read point of C_m k` (key side), each `A_m` the
module's mean Jacobian at its own hidden state (DESIGN.md section 1). Terms are grouped by
block: term 0 is the direct/identity term, then one term per block that contributes.
Both paths return the same grouping; the dense one as `[T, d, d]` operators (`X @ op.T`),
the per-feature one as `[n, T, d]` vectors.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from qlens_jax.lens import per_feature
from qlens_jax.lens.chunks import ChunkPlan, iter_token_chunks
from qlens_jax.lens.operators import TransportOperators
from qlens_jax.lens import points as pts
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


def first_order_terms_dense(
    operators: TransportOperators, points: DictionaryPoints, side: str, n_layers: int, mask_seed: bool
) -> tuple[list[int], jnp.ndarray]:
    """Per-block first-order operators `[T, d, d]` (term 0 the identity), applied as `X @ op.T`."""
    modules = contributing_modules(points, side, n_layers)
    if side == "value":
        module_op = lambda m: operators.first_order[m]
    else:
        # C_m k = mean_valid J_m^T (k seeded at every position), so X @ C_m^T = X @ A_all[m].
        source = operators.first_order if mask_seed else operators.first_order_all
        module_op = lambda m: source[m].T
    groups = _by_block(modules, n_layers)
    d = operators.first_order.shape[-1]
    terms = [jnp.eye(d, dtype=jnp.float32)]
    for rows in groups.values():
        terms.append(sum(module_op(m) for m in rows))
    return list(groups), jnp.stack(terms)


def first_order_terms_per_feature(
    model, tokens, mask, plan: ChunkPlan, side: str, vectors, points: DictionaryPoints, n_layers: int, mask_seed: bool
) -> tuple[list[int], jnp.ndarray]:
    """Per-block first-order vectors `[n, T, d]` (term 0 the feature vector itself)."""
    total = 0.0
    for chunk_tokens, chunk_mask in iter_token_chunks(tokens, mask, plan.sequences_per_chunk):
        if side == "value":
            sums = per_feature.first_order_value_chunk(model, chunk_tokens, chunk_mask, vectors, plan.tangent_chunk)
        else:
            sums = per_feature.first_order_key_chunk(model, chunk_tokens, chunk_mask, vectors, plan.tangent_chunk, mask_seed)
        total = total + sums
    per_module = total / float(np.asarray(mask).sum())
    modules = contributing_modules(points, side, n_layers)
    groups = _by_block(modules, n_layers)
    terms = [vectors]
    for rows in groups.values():
        terms.append(sum(per_module[:, m] for m in rows))
    return list(groups), jnp.stack(terms, axis=1)
