"""Per-feature transports over only the blocks a feature's point needs.

`per_feature.value_chunk` and `per_feature.key_chunk` linearize the whole model and push or
pull every feature through all of it, although a value vector written at `resid_post[l]`
only passes the blocks after `l`, and a key vector read there only the blocks up to `l`.
These run the same maps over those blocks alone:

- value side: the clean stream up to the write point is computed once per token chunk, then
  only the modules after it are linearized (none at the final residual: there the
  transported vector is the value vector itself, in the model's dtype);
- key side: only the modules up to the read point are run from the embedding, and the key
  vector is pulled back through them alone.

Where a feature sits is a traced module index, not a static argument: the modules outside
the range are skipped by `lax.cond` at run time, so one compiled program serves every layer
(the paper's job, 100 features at each layer, compiles once per side).

They return what the full-model functions return (position sums and sums of squares), to
rounding; `covers` says which points they handle (residual points, and key points read
through an MLP's pre-norm or a dictionary's own input norm; for parallel blocks only
points outside a block). `per_feature_means` takes them wherever `covers` holds.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from qlens_jax.lens import per_feature, points as pts, transport
from qlens_jax.lens.points import Point
from qlens_jax.models import Transformer, mlp_input


def covers(point: Point, side: str, n_layers: int, parallel: bool) -> bool:
    """Whether the shortened transports handle `point` on `side` ("value" or "key")."""
    if point.site in pts.MODULE_OUTPUT_SITES:
        return False
    if side == "value" and point.norm is not None:
        return False
    within_block = pts.flows_into(point, n_layers).site == "resid_mid"
    return not (parallel and within_block)


def first_module(point: Point, n_layers: int) -> int:
    """How many modules (`points.modules` order) come before the residual point `point`:
    where a value vector written there starts (`2 x n_layers` at the final residual)."""
    return sum(1 for m in pts.modules(n_layers) if m.reads < point.residual)


def modules_to(point: Point, n_layers: int) -> int:
    """How many modules, from the embedding up, write at or before the residual point `point`."""
    return sum(1 for m in pts.modules(n_layers) if m.writes <= point.residual)


def run_modules(
    model: Transformer,
    h: Float[Array, "b s d"],
    mask: Bool[Array, "b s"],
    start: Int[Array, ""] | int,
    stop: Int[Array, ""] | int,
) -> Float[Array, "b s d"]:
    """The residual after modules `start` .. `stop - 1` (`points.modules` order) run on `h`;
    the others are skipped. `start` / `stop` are traced: one program serves every layer, and
    a skipped module costs nothing when run (nor in its linearization). Parallel blocks run
    whole (`start` / `stop` then fall between blocks, `covers`)."""
    parallel = model.config.parallel_residual

    def step(h, xs):
        block, meta, b = xs
        on = lambda first, last: (first >= start) & (last < stop)
        if parallel:
            return jax.lax.cond(
                on(2 * b, 2 * b + 1), lambda h: transport.block_step(block, meta, h, mask), _same, h
            ), None
        h = jax.lax.cond(on(2 * b, 2 * b), lambda h: transport.attention_step(block, meta, h, mask), _same, h)
        return jax.lax.cond(on(2 * b + 1, 2 * b + 1), lambda h: transport.mlp_step(block, h), _same, h), None

    blocks = jnp.arange(model.config.n_layers)
    return jax.lax.scan(step, h, (model.blocks, model.meta, blocks))[0]


def _same(h):
    return h


def stream_to(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    stop: Int[Array, ""] | int,
    delta0: Float[Array, "b s d"] | None = None,
) -> Float[Array, "b s d"]:
    """The residual after the first `stop` modules (`modules_to`), with `delta0` added at
    `resid_pre[0]`."""
    h = jax.vmap(model.embed)(tokens)
    if delta0 is not None:
        h = h + (delta0 * mask[..., None].astype(jnp.float32)).astype(h.dtype)
    return run_modules(model, h, mask, 0, stop)


def _key_view(model: Transformer, view: str, layer: Int[Array, ""], h: Float[Array, "b s d"]) -> Float[Array, "b s d"]:
    """What a key reads from its residual `h`: `h` ("residual"), the MLP's normalized input of
    block `layer` ("mlp_in"), or `h` through a dictionary's input norm (its name)."""
    if view == "mlp_in":
        return mlp_input(model.block(layer)[0], h)
    if view != "residual":
        return transport.through_input_norm(h, view)
    return h


def key_view(point: Point) -> str:
    """`_key_view`'s name for the key point `point` (static: one program per name)."""
    return "mlp_in" if point.site == "mlp_in" else point.norm or "residual"


@eqx.filter_jit
def value_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    vectors: Float[Array, "n d"],
    start: Int[Array, ""],
    tangent_chunk: int,
) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
    """`per_feature.value_chunk` for vectors written before module `start` (`first_module` of
    their write point): position sums and sums of squares of each vector pushed from there to
    the final residual through modules `start` .. the last alone (none at the final residual)."""
    n_modules = 2 * model.config.n_layers
    dtype = model.embed_tokens.dtype
    clean = stream_to(model, tokens, mask, start)
    m = mask[..., None].astype(jnp.float32)
    _, push = jax.linearize(
        lambda delta: run_modules(model, clean + (delta * m).astype(dtype), mask, start, n_modules),
        jnp.zeros(model.config.d_model, jnp.float32),
    )
    return jax.lax.map(
        lambda v: per_feature.sum_and_square(push(v), mask), vectors.astype(jnp.float32), batch_size=tangent_chunk
    )


@eqx.filter_jit
def key_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    vectors: Float[Array, "n d"],
    stop: Int[Array, ""],
    view: str,
    layer: Int[Array, ""],
    tangent_chunk: int,
) -> tuple[Float[Array, "n d"], Float[Array, " n"]]:
    """`per_feature.key_chunk` for vectors read after the first `stop` modules (`modules_to`
    of their read point), through `view` of block `layer` (`key_view`): position sums and sums
    of squares of each vector pulled back to the embedding through those modules alone."""
    zeros = jnp.zeros((*tokens.shape, model.config.d_model), jnp.float32)
    stream, pull = jax.vjp(lambda d0: _key_view(model, view, layer, stream_to(model, tokens, mask, stop, d0)), zeros)
    seed_mask = mask[..., None]

    def one(vector):
        return per_feature.sum_and_square(pull(jnp.where(seed_mask, vector, 0.0).astype(stream.dtype))[0], mask)

    return jax.lax.map(one, vectors.astype(jnp.float32), batch_size=tangent_chunk)


def chunk_sums(model, tokens, mask, vectors, side: str, point: Point, tangent_chunk: int):
    """`value_chunk` or `key_chunk` for vectors at `point` (`covers` holds), the module bounds
    computed here."""
    n_layers = model.config.n_layers
    residual = pts.flows_into(point, n_layers)
    if side == "value":
        return value_chunk(model, tokens, mask, vectors, jnp.asarray(first_module(residual, n_layers)), tangent_chunk)
    stop = jnp.asarray(modules_to(residual, n_layers))
    return key_chunk(model, tokens, mask, vectors, stop, key_view(point), jnp.asarray(point.layer), tangent_chunk)
