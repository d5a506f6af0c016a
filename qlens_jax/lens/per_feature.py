"""Per-feature transports: linearize once per token chunk, map the linear map over features.

The path for requests with fewer features than `d_model`, the self-check of the dense path,
and the source of per-position statistics (relative variance). Each function returns sums
over the chunk's valid positions; callers add chunks and divide by the token count.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from qlens_jax.lens import points as pts, transport
from qlens_jax.models import Transformer


def sum_and_square(x: Float[Array, "b s d"], mask: Bool[Array, "b s"]) -> tuple[Float[Array, " d"], Float[Array, ""]]:
    """Sum over valid positions of `x` and of its squared norm (float32): one chunk's share of a mean and mean square."""
    x = x.astype(jnp.float32)
    return transport.masked_sum(x, mask), jnp.einsum("bsd,bs->", x * x, mask.astype(jnp.float32))


@eqx.filter_jit
def value_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    vectors: Float[Array, "n d"],
    points: Int[Array, " n"],
    tangent_chunk: int,
) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
    """Push each vector forward from its write point (`points.row`): position sums and sums of squares."""
    shape = (pts.n_points(model.config.n_layers), model.config.d_model)
    _, push = jax.linearize(
        lambda deltas: transport.final_from_probes(model, tokens, mask, deltas), jnp.zeros(shape, jnp.float32)
    )

    def one(args):
        vector, point = args
        return sum_and_square(push(jnp.zeros(shape, jnp.float32).at[point].set(vector)), mask)

    return jax.lax.map(one, (vectors.astype(jnp.float32), points), batch_size=tangent_chunk)


@eqx.filter_jit
def key_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    vectors: Float[Array, "n d"],
    points: Int[Array, " n"],
    tangent_chunk: int,
    with_input_norms: bool = False,
) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
    """Pull each vector back from its read point (`points.row`) to the embedding: sums and sums of squares."""
    d = model.config.d_model
    zeros = jnp.zeros((*tokens.shape, d), jnp.float32)
    stream, pull = jax.vjp(lambda d0: transport.points_from_embedding(model, tokens, mask, d0, with_input_norms), zeros)
    seed_mask = mask[..., None]

    def one(args):
        vector, point = args
        seed = jnp.where(seed_mask, vector, 0.0).astype(stream.dtype)
        cotangent = jnp.zeros_like(stream).at[point].set(seed)
        return sum_and_square(pull(cotangent)[0], mask)

    return jax.lax.map(one, (vectors.astype(jnp.float32), points), batch_size=tangent_chunk)


def _module_push(model: Transformer, tokens: Int[Array, "b s"], mask: Bool[Array, "b s"]):
    """`v -> [modules, b, s, d]`: every module's Jacobian at its clean input applied to `v` at every
    valid position (one linearization for all vectors)."""
    n_modules = len(pts.modules(model.config.n_layers))
    inputs = transport.clean_module_inputs(model, tokens, mask)
    zeros = jnp.zeros((n_modules, model.config.d_model), jnp.float32)
    _, push = jax.linearize(lambda deltas: transport.module_outputs(model, inputs, mask, deltas), zeros)
    return lambda v: push(jnp.broadcast_to(v, zeros.shape))


@eqx.filter_jit
def first_order_value_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    vectors: Float[Array, "n d"],
    tangent_chunk: int,
) -> Float[Array, "n modules d"]:
    """Each module's Jacobian applied to each vector broadcast over valid positions, summed."""
    push = _module_push(model, tokens, mask)
    one = lambda v: transport.masked_sum(push(v), mask)
    return jax.lax.map(one, vectors.astype(jnp.float32), batch_size=tangent_chunk)


@eqx.filter_jit
def first_order_value_stats_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    vectors: Float[Array, "n d"],
    rows: Int[Array, " m"],
    tangent_chunk: int,
) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
    """The per-position first-order value vector `v + sum over rows m of J_m(position) v`:
    position sums and sums of squares (the relative variance of first order)."""
    push = _module_push(model, tokens, mask)
    one = lambda v: sum_and_square(v + push(v)[rows].sum(0), mask)

    return jax.lax.map(one, vectors.astype(jnp.float32), batch_size=tangent_chunk)


@eqx.filter_jit
def first_order_key_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    vectors: Float[Array, "n d"],
    tangent_chunk: int,
    mask_seed: bool,
) -> Float[Array, "n modules d"]:
    """Each module's VJP of each vector; the seed covers every position unless `mask_seed`
    (the reference's convention, docs/definitions.md section 1), the result only valid ones."""
    n_modules = len(pts.modules(model.config.n_layers))
    inputs = transport.clean_module_inputs(model, tokens, mask)
    zeros = jnp.zeros((n_modules, model.config.d_model), jnp.float32)
    outputs, pull = jax.vjp(lambda deltas: transport.module_outputs(model, inputs, mask, deltas), zeros)
    seed_mask = mask[None, ..., None] if mask_seed else jnp.ones((1, *mask.shape, 1), bool)

    def one(v):
        seed = jnp.where(seed_mask, v, 0.0)
        return pull(jnp.broadcast_to(seed, outputs.shape).astype(outputs.dtype))[0]

    return jax.lax.map(one, vectors.astype(jnp.float32), batch_size=tangent_chunk)


@eqx.filter_jit
def z_value_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    vectors: Float[Array, "n q"],
    layer: int,
    tangent_chunk: int,
) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
    """Push each vector forward from `z[layer]` (through the output projection, any post-norm
    and every later module): position sums and sums of squares."""
    c = model.config
    deltas = jnp.zeros((pts.n_points(c.n_layers), c.d_model), jnp.float32)
    zeros = jnp.zeros((c.n_layers, c.n_heads * c.head_dim), jnp.float32)
    _, push = jax.linearize(lambda z_deltas: transport.final_from_probes(model, tokens, mask, deltas, z_deltas), zeros)
    one = lambda vector: sum_and_square(push(zeros.at[layer].set(vector)), mask)
    return jax.lax.map(one, vectors.astype(jnp.float32), batch_size=tangent_chunk)


@eqx.filter_jit
def site_key_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    vectors: Float[Array, "n w"],
    site: pts.Point,
    tangent_chunk: int,
) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
    """Pull each vector back from module output `site` (static) to the embedding: sums and
    sums of squares."""
    zeros = jnp.zeros((*tokens.shape, model.config.d_model), jnp.float32)
    values, pull = jax.vjp(
        lambda d0: transport.points_and_sites_from_embedding(model, tokens, mask, d0, sites=(site,))[1], zeros
    )
    seed = lambda vector: jnp.where(mask[..., None], vector, 0.0).astype(values.dtype)
    one = lambda vector: sum_and_square(pull(seed(vector))[0], mask)
    return jax.lax.map(one, vectors.astype(jnp.float32), batch_size=tangent_chunk)


@eqx.filter_jit
def z_hop_value_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    vectors: Float[Array, "n q"],
    layer: int,
    tangent_chunk: int,
) -> Float[Array, "n d"]:
    """The first-order hop of each value vector from `z[layer]` into the residual: the output
    projection (and any post-norm) at each valid position, summed."""
    _, zs = transport.clean_z(model, tokens, mask, (layer,))
    zeros = jnp.zeros(zs.shape[-1], jnp.float32)
    _, push = jax.linearize(lambda dz: transport.output_from_z(model, layer, zs[0], mask, dz), zeros)
    return jax.lax.map(
        lambda u: transport.masked_sum(push(u), mask), vectors.astype(jnp.float32), batch_size=tangent_chunk
    )


@eqx.filter_jit
def z_hop_key_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    vectors: Float[Array, "n q"],
    layer: int,
    tangent_chunk: int,
    mask_seed: bool,
) -> Float[Array, "n d"]:
    """The first-order hop of each key vector from `z[layer]` back to the block's input: the
    VJP of the attention up to `z`, seeded as `first_order_key_chunk` seeds a module."""
    pres, _ = transport.clean_z(model, tokens, mask, (layer,))
    zeros = jnp.zeros(model.config.d_model, jnp.float32)
    out, pull = jax.vjp(lambda dh: transport.z_from_input(model, layer, pres[0], mask, dh), zeros)
    seed_mask = mask[..., None] if mask_seed else jnp.ones((*mask.shape, 1), bool)
    one = lambda k: pull(jnp.broadcast_to(jnp.where(seed_mask, k, 0.0), out.shape).astype(out.dtype))[0]
    return jax.lax.map(one, vectors.astype(jnp.float32), batch_size=tangent_chunk)
