"""Block-major sweeps: every basis vector at once, one block at a time, MLPs as explicit Jacobians.

The basis-major sweeps of `operators` push one basis vector at a time through the whole
linearized model. An MLP then costs `r x (2 or 3) x d_model x d_mlp` multiply-adds per token
for `r` basis vectors, because every vector goes through the wide hidden layer. The MLP's
Jacobian at one position is a `d_model x d_model` matrix,

    Q = J_pre^T [W_up diag(s)] W_down J_post^T        (row convention: tangent x -> x @ Q)

(`s` the activation's derivative; gated MLPs fold their two branches into one `W_up`-sized
factor; `ResidualMLP.jacobian` of the MLP module, by autodiff for modules without such a
product, such as routed experts), and forming it costs `d_model x d_mlp x d_model` (the
module's `MLPCost.form`) once per position, shared by all
basis vectors, after which each vector costs only `d_model^2`. With the whole basis of
GPT-2 small (`r = d_model = 768`, `d_mlp = 3072`) that is 5 instead of 8 `d_model^3` per token
and block, about a quarter of a whole sweep's arithmetic. It needs all `r` tangents of a token
chunk alive at once (`r x tokens x d_model`), so `operators.transport_operators` picks this
order only when they fit (`sequences_that_fit`) and it pays (`worth_it`). Attention mixes
positions, so it still costs a pass per basis vector: its VJP (value side) or the transpose of
its VJP (key side), `VJP_CHUNK` vectors at a time. When both sides are wanted,
`both_sweeps_blockwise` forms each block's Jacobians once for the two sweeps: the key sweep
(bottom up) keeps them and the value sweep (top down) reuses them, at `blocks x tokens x d^2`
floats of memory.

Walking block by block also lets a sweep stop where a job's dictionaries stop needing it: the
value sweep runs from the top down to `first_block`, the key sweep from the embedding up to
`n_blocks`. Points outside that range are left zero, and `TransportOperators` records which
points are valid.

A parallel block (GPT-NeoX) is swept as `points` lays it out: its MLP Jacobians are formed at
`resid_pre` (the `resid_mid` copy), the value side pulls the cotangent at `resid_post` through
both modules (`cot + J_attn^T cot + J_mlp^T cot`), the key side pushes the tangent at
`resid_pre` through both (`tan + J_attn tan + J_mlp tan`).

The outputs have exactly the layout of the basis-major sweeps (`operators.value_sweep_chunk`,
`operators.key_sweep_chunk`), which tests compare against.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from qlens_jax.lens import points as pts
from qlens_jax.lens.points import Point
from qlens_jax.lens.transport import (
    attention_batch,
    attention_z_batch,
    basis_tangents,
    clean_states,
    masked_sum,
    through_input_norm,
)
from qlens_jax.memory import is_cpu
from qlens_jax.models import Block, Transformer, attention_output, block_output, mlp_block_input, mlp_cost, mlp_input
from qlens_jax.models.config import ModelConfig

# Positions whose MLP Jacobians are formed in one step: each holds `d_model x d_mlp` floats.
# On CPU one at a time is fastest (plain GEMMs: 380 GFLOP/s against 310 for 16 positions on
# 2 Zen 5 cores at GPT-2-small width); accelerators keep batched products.
TOKEN_CHUNK = 16
CPU_TOKEN_CHUNK = 1


def token_chunk() -> int:
    """Positions per MLP-Jacobian step on the default backend."""
    return CPU_TOKEN_CHUNK if is_cpu() else TOKEN_CHUNK


# Vectors mapped through an attention VJP (or its transpose) at once: faster than one at a
# time on CPU.
VJP_CHUNK = 8


def worth_it(config: ModelConfig, basis_per_device: int) -> bool:
    """Whether explicit MLP Jacobians cost fewer multiply-adds than pushing each basis vector
    through the MLP: forming one (`MLPCost.form`) plus applying it to `r` vectors (`r d^2`)
    against `r` pushes (`MLPCost.per_vector`) per position. A dense MLP forms it in
    `d d_mlp d` and pushes in `(2 or 3) d d_mlp`: `r` above `d d_mlp / ((2 or 3) d_mlp - d)`
    (GPT-2 small: 439 of 768). The count holds on every backend; whether the batched
    `d x d_mlp x d` products also win in time on a GPU is pending a measurement there
    (docs/accelerators.md)."""
    cost, d, r = mlp_cost(config), config.d_model, basis_per_device
    return cost.form + r * d * d < r * cost.per_vector


def sequences_that_fit(
    model: Transformer, seq_len: int, basis_per_device: int, budget_gb: float, kept_blocks: int = 0
) -> int:
    """Sequences per step whose block-major state fits 80 % of the budget (0: not even one):
    about five copies of the `r x tokens x d` tangents and one `d x d` Jacobian per position
    (plus `kept_blocks` more, kept for a second sweep by `both_sweeps_blockwise`), the MLP
    Jacobians being formed and the clean hidden states."""
    c = model.config
    itemsize = max(np.dtype(model.embed_tokens.dtype).itemsize, 4)
    jacobians = (1 + kept_blocks) * c.d_model**2
    per_token = (5 * basis_per_device * c.d_model + jacobians + 4 * c.n_layers * c.d_model) * itemsize
    forming = token_chunk() * mlp_cost(c).forming_floats * itemsize
    return int(max(0, (0.8 * budget_gb * 2**30 - forming) // (per_token * seq_len)))


def mlp_jacobian(block: Block, h: Float[Array, " d"]) -> Float[Array, "d d"]:
    """The MLP residual module's Jacobian at one position, row convention (`x -> x @ Q`):
    `J_pre^T M J_post^T` with `M` the MLP's own (`ResidualMLP.jacobian`)."""
    x, pull_norm = jax.vjp(block.mlp_norm, h)
    out, product = block.mlp.jacobian(x)
    # Norm Jacobians act on the d x d product (cheaper than on a d x d_mlp factor):
    # J_post^T on rows, J_pre^T on columns.
    if block.mlp_post_norm is not None:
        _, push_post = jax.linearize(block.mlp_post_norm, out)
        product = jax.vmap(push_post)(product)
    return jax.vmap(lambda column: pull_norm(column)[0], in_axes=1, out_axes=1)(product)


def apply_rowwise(
    tangents: Float[Array, "r b s d"], q: Float[Array, "b s d e"], transpose: bool
) -> Float[Array, "r b s e"]:
    """`t @ Q` (or `t @ Q^T`) at every position for every tangent. On CPU: one `[r, d] x [d, e]`
    GEMM per position, written in place (80 % of the float32 matmul peak, where one batched
    GEMM over positions with the transposes it needs ran at 50 %). Elsewhere: that one batched
    GEMM, since a loop over positions would serialize small kernels on an accelerator."""
    if not is_cpu():
        by_position = jnp.transpose(tangents, (1, 2, 0, 3))
        out = jnp.einsum("bsnd,bsed->bsne" if transpose else "bsnd,bsde->bsne", by_position, q)
        return jnp.transpose(out, (2, 0, 1, 3))
    r, b, s, d = tangents.shape
    e = q.shape[-1]
    # Contract the tangent's `d` with Q's rows (`t @ Q`) or columns (`t @ Q^T`, no transpose made).
    contract = (((1,), (1,)) if transpose else ((1,), (0,)), ((), ()))

    def one_position(p, out):
        i, j = p // s, p % s
        t = jax.lax.dynamic_slice(tangents, (0, i, j, 0), (r, 1, 1, d))[:, 0, 0]
        qp = jax.lax.dynamic_slice(q, (i, j, 0, 0), (1, 1, d, e))[0, 0]
        product = jax.lax.dot_general(t, qp, contract)
        return jax.lax.dynamic_update_slice(out, product[:, None, None, :], (0, i, j, 0))

    return jax.lax.fori_loop(0, b * s, one_position, jnp.zeros((r, b, s, e), tangents.dtype))


def mlp_jacobians(
    block: Block, h: Float[Array, "b s d"], positions_per_step: int | None = None
) -> Float[Array, "b s d d"]:
    """`mlp_jacobian` at every position, `positions_per_step` (default: `token_chunk()`) per step."""
    d = h.shape[-1]
    flat = h.reshape(-1, d)
    per_step = token_chunk() if positions_per_step is None else positions_per_step
    q = jax.lax.map(lambda x: mlp_jacobian(block, x), flat, batch_size=min(per_step, flat.shape[0]))
    return q.reshape(*h.shape, d)


def _summed_through(f, primal, tangents, mask, tangent_chunk: int) -> Float[Array, "r d"]:
    """Masked position sums of `J_f(primal) t` for each tangent `t` of `tangents [r, b, s, d]`."""
    _, push = jax.linearize(f, primal)
    return jax.lax.map(lambda t: masked_sum(push(t), mask), tangents, batch_size=tangent_chunk)


def _blocks(model: Transformer, start: int, stop: int):
    take = lambda x: x[start:stop]
    return jax.tree.map(take, model.blocks), jax.tree.map(take, model.meta)


def _value_blocks(
    model, mask, tangent_chunk, cotangent, pres, mids, lo: int, hi: int, jacobians=None, record_z: bool = False
):
    """Pull `cotangent` (at `resid_post[hi - 1]`) down through blocks `hi - 1 .. lo`: the
    cotangent at `resid_pre[lo]` and each block's position sums at its `resid_pre`,
    `resid_mid` and, with `record_z`, its `z` (else None). `jacobians[b]`: block `b`'s MLP
    Jacobians, formed here when None."""
    blocks, meta = _blocks(model, lo, hi)
    chunk = max(tangent_chunk, VJP_CHUNK)

    def step(cot, xs):
        block, meta, pre, mid, index = xs
        q = mlp_jacobians(block, mid) if jacobians is None else jacobians[index]
        cot_mid = cot + apply_rowwise(cot, q, transpose=True)
        # The attention's output is added at resid_mid, or at resid_post in a parallel block.
        cot_attn = cot if block.parallel else cot_mid
        if not record_z:
            _, pull = jax.vjp(lambda h: attention_batch(block, meta, h, mask), pre)
            cot_pre = cot_mid + jax.lax.map(lambda c: pull(c)[0], cot_attn, batch_size=chunk)
            return cot_pre, (masked_sum(cot_pre, mask), masked_sum(cot_mid, mask), None)
        z, pull_z = jax.vjp(lambda h: attention_z_batch(block, meta, h, mask), pre)
        _, pull_out = jax.vjp(lambda heads: attention_output(block, heads), z)
        cot_z = jax.lax.map(lambda c: pull_out(c)[0], cot_attn, batch_size=chunk)
        cot_pre = cot_mid + jax.lax.map(lambda c: pull_z(c)[0], cot_z, batch_size=chunk)
        return cot_pre, (masked_sum(cot_pre, mask), masked_sum(cot_mid, mask), masked_sum(cot_z, mask))

    xs = (blocks, meta, pres[lo:hi], mids[lo:hi], jnp.arange(lo, hi))
    return jax.lax.scan(step, cotangent, xs, reverse=True)


def _value_sweep(
    model,
    mask,
    basis,
    tangent_chunk,
    states,
    first_block: int,
    jacobians=None,
    shared_blocks: int = 0,
    sites: tuple[Point, ...] = (),
):
    """The value sweep's outputs (see `value_sweep_blockwise`); blocks below `shared_blocks`
    take their MLP Jacobians from `jacobians` instead of forming them again."""
    n_layers, d = model.config.n_layers, model.config.d_model
    _, pres, mids = states
    z_sites = pts.value_sites(sites)
    top = basis_tangents(basis, d, mask, model.embed_tokens.dtype)
    split = min(max(first_block, shared_blocks), n_layers)
    top_sum = masked_sum(top, mask)
    sums, cot = {"resid_pre": [], "resid_mid": [], "z": []}, top
    for lo, hi, given in ((split, n_layers, None), (first_block, split, jacobians)):
        if lo < hi:
            cot, (at_pre, at_mid, at_z) = _value_blocks(
                model, mask, tangent_chunk, cot, pres, mids, lo, hi, given, bool(z_sites)
            )
            sums["resid_pre"].insert(0, at_pre)
            sums["resid_mid"].insert(0, at_mid)
            sums["z"].insert(0, at_z)
    # Per-block sums of blocks first_block .. n_layers - 1.
    by_site = {site: jnp.concatenate(parts) for site, parts in sums.items() if parts and parts[0] is not None}
    final = pts.final_point(n_layers)
    zero = jnp.zeros_like(top_sum)

    def at(point: Point):
        if point == final:
            return top_sum
        return by_site[point.site][point.layer - first_block] if point.layer >= first_block else zero

    stack = jnp.stack([at(p) for p in pts.value_points(n_layers)])
    return stack, _side_by_side([at(p) for p in z_sites], top_sum)


def _side_by_side(parts: list, like: Float[Array, "r d"]) -> Float[Array, "r width"]:
    """Per-site `[r, width]` sums concatenated along the last axis (`[r, 0]` without any)."""
    return jnp.concatenate(parts, axis=-1) if parts else jnp.zeros((like.shape[0], 0), jnp.float32)


@eqx.filter_jit
def value_sweep_blockwise(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    basis: Int[Array, " r"],
    tangent_chunk: int,
    first_block: int = 0,
    sites: tuple[Point, ...] = (),
) -> tuple[Float[Array, "points r d"], Float[Array, "r width"]]:
    """As `operators.value_sweep_chunk`, block by block from the top down to `first_block`
    (points before `resid_pre[first_block]` are zero)."""
    return _value_sweep(model, mask, basis, tangent_chunk, clean_states(model, tokens, mask), first_block, sites=sites)


def _key_sweep(
    model,
    mask,
    basis,
    tangent_chunk,
    states,
    with_input_norms: bool,
    n_blocks: int,
    keep_jacobians: bool,
    sites: tuple[Point, ...] = (),
):
    """The key sweep's outputs (see `key_sweep_blockwise`) and, when `keep_jacobians`, every
    swept block's MLP Jacobians (`[n_blocks, b, s, d, d]`, else None)."""
    n_layers, d = model.config.n_layers, model.config.d_model
    final, pres, mids = states
    bottom = basis_tangents(basis, d, mask, model.embed_tokens.dtype)
    blocks, meta = _blocks(model, 0, n_blocks)
    norms = pts.INPUT_NORMS_WITH_JACOBIAN if with_input_norms else ()
    recorded = {p.site for p in sites}
    chunk = max(tangent_chunk, VJP_CHUNK)
    through_norms = lambda primal, tangents: [
        _summed_through(lambda h: through_input_norm(h, norm), primal, tangents, mask, tangent_chunk) for norm in norms
    ]

    def attention(block, meta, pre, tangent):
        """The attention module's output tangents and, when recorded, its `z` tangents' sums."""
        if "z" not in recorded:
            # The JVP as the transpose of the VJP: same numbers, and batches of VJP_CHUNK run
            # faster than the linearized JVP on CPU (8.1 s against 11.1 s per 256-token block).
            _, pull = jax.vjp(lambda h: attention_batch(block, meta, h, mask), pre)
            push = jax.linear_transpose(lambda c: pull(c)[0], pre)
            return jax.lax.map(lambda t: push(t)[0], tangent, batch_size=chunk), None
        z, pull_z = jax.vjp(lambda h: attention_z_batch(block, meta, h, mask), pre)
        push_z = jax.linear_transpose(lambda c: pull_z(c)[0], z)
        tan_z = jax.lax.map(lambda t: push_z(t)[0], tangent, batch_size=chunk)
        _, push_out = jax.linearize(lambda heads: attention_output(block, heads), z)
        return jax.lax.map(push_out, tan_z, batch_size=chunk), masked_sum(tan_z, mask)

    def step(tangent, xs):
        block, meta, pre, mid = xs
        tan_attn, at_z = attention(block, meta, pre, tangent)
        tan_mid = mlp_block_input(tangent, tan_attn, block.parallel)
        at_mlp_in = _summed_through(lambda h: mlp_input(block, h), mid, tan_mid, mask, tangent_chunk)
        q = mlp_jacobians(block, mid)
        tan_mlp = apply_rowwise(tan_mid, q, transpose=False)
        tan_post = block_output(tan_mid, tan_attn, tan_mlp, block.parallel)
        sums = (masked_sum(tangent, mask), masked_sum(tan_mid, mask), at_mlp_in)
        outputs = {
            "z": at_z,
            "attn_out": masked_sum(tan_attn, mask) if "attn_out" in recorded else None,
            "mlp_out": masked_sum(tan_mlp, mask) if "mlp_out" in recorded else None,
        }
        return tan_post, (
            sums,
            through_norms(pre, tangent),
            through_norms(mid, tan_mid),
            outputs,
            q if keep_jacobians else None,
        )

    last, ((at_pre, at_mid, at_mlp_in), norm_pre, norm_mid, outputs, jacobians) = jax.lax.scan(
        step, bottom, (blocks, meta, pres[:n_blocks], mids[:n_blocks])
    )
    last_primal = final if n_blocks == n_layers else pres[n_blocks]

    # Position sums per norm (None: none) and site over blocks 0 .. n_blocks - 1, and at the
    # residual point the sweep ends at.
    sums: dict[str | None, dict[str, Array]] = {None: {"resid_pre": at_pre, "resid_mid": at_mid, "mlp_in": at_mlp_in}}
    ends: dict[str | None, Array] = {None: masked_sum(last, mask)}
    for norm, pre, mid in zip(norms, norm_pre, norm_mid):
        sums[norm] = {"resid_pre": pre, "resid_mid": mid}
        ends[norm] = _summed_through(lambda h: through_input_norm(h, norm), last_primal, last, mask, tangent_chunk)
    end = pts.block_start(n_blocks, n_layers)
    zero = jnp.zeros_like(ends[None])

    def at(point: Point):
        if point.residual == end:
            return ends[point.norm]
        by_site = sums[point.norm]
        return by_site[point.site][point.layer] if point.layer < n_blocks and point.site in by_site else zero

    stack = jnp.stack([at(p) for p in pts.key_points(n_layers, with_input_norms)])
    # `outputs` holds an array for every site in `recorded`, None for the others
    at_sites = _side_by_side([outputs[p.site][p.layer] for p in sites], ends[None])  # pyright: ignore[reportOptionalSubscript]
    return (stack, at_sites), jacobians


@eqx.filter_jit
def key_sweep_blockwise(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    basis: Int[Array, " r"],
    tangent_chunk: int,
    with_input_norms: bool = False,
    n_blocks: int | None = None,
    sites: tuple[Point, ...] = (),
) -> tuple[Float[Array, "key_points r d"], Float[Array, "r width"]]:
    """As `operators.key_sweep_chunk`, block by block from the embedding up through block
    `n_blocks - 1` (residual points after `resid_pre[n_blocks]` and later MLP inputs are zero;
    `sites` must lie in those blocks)."""
    n_blocks = model.config.n_layers if n_blocks is None else n_blocks
    states = clean_states(model, tokens, mask)
    return _key_sweep(
        model, mask, basis, tangent_chunk, states, with_input_norms, n_blocks, keep_jacobians=False, sites=sites
    )[0]


@eqx.filter_jit
def both_sweeps_blockwise(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    basis: Int[Array, " r"],
    tangent_chunk: int,
    first_block: int = 0,
    with_input_norms: bool = False,
    n_blocks: int | None = None,
    sites: tuple[Point, ...] = (),
) -> tuple[
    tuple[Float[Array, "points r d"], Float[Array, "r v"]], tuple[Float[Array, "key_points r d"], Float[Array, "r k"]]
]:
    """`value_sweep_blockwise` and `key_sweep_blockwise` in one step that forms each MLP
    Jacobian once: the key sweep keeps those of its blocks (`n_blocks x tokens x d^2` floats)
    and the value sweep reuses them, so the blocks both sweep cost 4 instead of 8 `d^3` of
    Jacobian per token."""
    n_blocks = model.config.n_layers if n_blocks is None else n_blocks
    states = clean_states(model, tokens, mask)
    key, jacobians = _key_sweep(
        model, mask, basis, tangent_chunk, states, with_input_norms, n_blocks, keep_jacobians=True, sites=sites
    )
    value = _value_sweep(
        model, mask, basis, tangent_chunk, states, first_block, jacobians, shared_blocks=n_blocks, sites=sites
    )
    return value, key
