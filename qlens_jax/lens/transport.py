"""The linear maps Query Lens needs, as functions of perturbations of one token chunk.

Three functions of a token chunk `(tokens [b, s], mask [b, s])`, each linear in its
perturbation argument once linearized at the clean hidden states:

- `final_from_probes(deltas [P, d])`: the final residual when `deltas[p]` is added at every
  valid position of point `p`. Its JVP pushes a value vector forward from any point; its VJP
  with a cotangent at the top yields, in one pass, the position-summed cotangent at *every*
  point (the gradient with respect to a broadcast vector is the masked sum over positions).
  `z_deltas [L, q]` adds vectors at every block's `z` (the heads' outputs) as well.
- `points_from_embedding(delta0 [b, s, d])`: every residual point (and each MLP's normalized
  input) when `delta0` is added to `resid_pre[0]`. Its JVP pushes a tangent up from the
  embedding; its VJP pulls a key vector back from any point to the embedding.
  `points_and_sites_from_embedding` also returns requested module outputs (`z`, `attn_out`,
  `mlp_out` of some blocks, `points.MODULE_OUTPUT_SITES`), side by side along the last axis.
- `module_outputs(deltas [2L, d])`: each residual module's output at its own clean input
  plus `deltas[m]` at every valid position: the single-hop (first-order) terms.

Parallel blocks (GPT-NeoX) run as `points` lays them out: the MLP reads a copy of `resid_pre`
(the `resid_mid` row) and both module outputs are added at `resid_post`, so the reverse sweep
gives `cot_pre = cot + J_attn^T cot + J_mlp^T cot` and the forward sweep
`tan_post = tan + J_attn tan + J_mlp tan`, both Jacobians at `resid_pre`.

Rows of the perturbation and output stacks are those of `points.row` (points) and
`points.module_row` (modules). `run_from` runs the same forward pass on from any residual
point: the splice of the secant baselines and of steering.

Masking: perturbations enter only at valid positions. Attention never lets a valid query
see a pad key and pads sit at the end (right padding), so pad positions never feed valid
ones; the transports equal the `t <- mask * (t + J t)` recursion of docs/definitions.md at every valid
position, and every sum over positions is masked.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from qlens_jax.dictionaries.normalization import input_stats, normalize
from qlens_jax.lens import points as pts
from qlens_jax.lens.points import Module, Point
from qlens_jax.models import (
    Transformer,
    attention_output,
    attention_residual,
    attention_z,
    block_output,
    mlp_block_input,
    mlp_input,
    mlp_residual,
)

attention_batch = jax.vmap(attention_residual, in_axes=(None, None, 0, 0))
attention_batch.__doc__ = "`attention_residual` over a batch: `(block, meta, h [b, s, d], mask [b, s])`."
attention_z_batch = jax.vmap(attention_z, in_axes=(None, None, 0, 0))
attention_z_batch.__doc__ = "`attention_z` over a batch: `(block, meta, h [b, s, d], mask [b, s])` -> `[b, s, q]`."


def basis_tangents(
    basis: Int[Array, "*r"], d: int, mask: Bool[Array, "b s"], dtype=jnp.float32
) -> Float[Array, "*r b s d"]:
    """The basis vectors `e_j`, j in `basis`, at every valid position (zero at pads): the
    tangents and cotangents that the dense sweeps push through the model."""
    one_hot = jax.nn.one_hot(basis, d, dtype=jnp.float32)[..., None, None, :]
    return jnp.where(mask[..., None], one_hot, 0.0).astype(dtype)


def through_input_norm(h: Float[Array, "*batch d"], norm: str) -> Float[Array, "*batch d"]:
    """`h` after a dictionary's per-token input normalization `norm` (one of
    `points.INPUT_NORMS_WITH_JACOBIAN`), in `h`'s dtype: what key points with a `norm` hold."""
    return normalize(h, input_stats(h, norm)).astype(h.dtype)


def attention_step(block, meta, h: Float[Array, "b s d"], mask: Bool[Array, "b s"]) -> Float[Array, "b s d"]:
    """`resid_mid` from `resid_pre` = `h` on a batch: the attention half of a block."""
    return h + attention_batch(block, meta, h, mask)


def mlp_step(block, h: Float[Array, "b s d"]) -> Float[Array, "b s d"]:
    """`resid_post` from `resid_mid` = `h` on a batch: the MLP half of a block."""
    return h + mlp_residual(block, h)


def block_step(block, meta, h: Float[Array, "b s d"], mask: Bool[Array, "b s"]) -> Float[Array, "b s d"]:
    """`resid_post` from `resid_pre` = `h` on a batch: one whole block, sequential or parallel."""
    if not block.parallel:
        return mlp_step(block, attention_step(block, meta, h, mask))
    return block_output(h, attention_batch(block, meta, h, mask), mlp_residual(block, h), True)


def _run(model: Transformer, tokens, mask, pre_deltas, mid_deltas, delta0, z_deltas=None, module_outputs: bool = False):
    """Forward pass of a chunk with additive perturbations; returns all points and, with
    `module_outputs` or `z_deltas`, each block's `z`, `attn_out` and `mlp_out` (else None).
    In a parallel block `mid_deltas` perturb the MLP's input alone (`points`: its `resid_mid`)."""
    # Perturbations are float32; they are broadcast and masked before the cast to the model
    # dtype, so that their transposes (sums over positions) accumulate in float32.
    m = mask[..., None].astype(jnp.float32)
    h = jax.vmap(model.embed)(tokens)
    dtype = h.dtype
    if delta0 is not None:
        h = h + (delta0 * m).astype(dtype)
    split_attention = module_outputs or z_deltas is not None

    def step(h, xs):
        block, meta, d_pre, d_mid, d_z = xs
        pre = h + (d_pre * m).astype(dtype)
        if not split_attention and not block.parallel:
            mid = attention_step(block, meta, pre, mask) + (d_mid * m).astype(dtype)
            return mlp_step(block, mid), (pre, mid, mlp_input(block, mid), None)
        z = attention_z_batch(block, meta, pre, mask)
        if d_z is not None:
            z = z + (d_z * m).astype(dtype)
        attn_out = attention_output(block, z)
        mid = mlp_block_input(pre, attn_out, block.parallel) + (d_mid * m).astype(dtype)
        mlp_out = mlp_residual(block, mid)
        outputs = {"z": z, "attn_out": attn_out, "mlp_out": mlp_out} if split_attention else None
        return block_output(mid, attn_out, mlp_out, block.parallel), (pre, mid, mlp_input(block, mid), outputs)

    xs = (model.blocks, model.meta, pre_deltas, mid_deltas, z_deltas)
    final, (pres, mids, mlp_ins, outputs) = jax.lax.scan(step, h, xs)
    return final, pres, mids, mlp_ins, outputs


def run_from(
    model: Transformer, h: Float[Array, "b s d"], mask: Bool[Array, "b s"], point: Point
) -> Float[Array, "b s d"]:
    """The final residual when the stream at residual point `point` is `h` (a splice: the
    model run on from where a dictionary writes). `point` is static."""
    n_layers = model.config.n_layers
    after = [m for m in pts.modules(n_layers) if m.reads >= point.residual]
    if not after:
        return h
    first = after[0].layer
    if after[0].kind == "mlp":
        if model.config.parallel_residual:
            raise ValueError(f"cannot run on from {point}: a parallel block has no resid_mid (points.module_writes)")
        layer, _ = model.block(first)
        h, first = mlp_step(layer, h), first + 1
    rest = jax.tree.map(lambda a: a[first:], (model.blocks, model.meta))

    def step(h, block_and_meta):
        block, meta = block_and_meta
        return block_step(block, meta, h, mask), None

    return jax.lax.scan(step, h, rest)[0]


def residual_stack(by_site: dict, n_layers: int) -> Float[Array, " points *rest"]:
    """Per-block arrays of each site (`by_site[site][b]`) stacked in `points.value_points`
    order: each block's module inputs, block by block, then the final residual."""
    sites = [module.reads.site for module in pts.modules(1)]
    order = tuple(Point(site, b) for b in range(n_layers) for site in sites) + (pts.final_point(n_layers),)
    assert order == pts.value_points(n_layers)
    # A stack and a reshape, not a gather of rows: the traced program (and its rounding) the
    # sweeps have always had.
    per_block = jnp.stack([by_site[site][:n_layers] for site in sites], axis=1)
    final = by_site["resid_post"][n_layers - 1]
    return jnp.concatenate([per_block.reshape(-1, *per_block.shape[2:]), final[None]], axis=0)


def _by_site(pres, mids, mlp_ins, final) -> dict:
    """Per-block arrays of each site (`resid_post[b]` is `resid_pre[b + 1]`, then the final)."""
    posts = jnp.concatenate([pres[1:], final[None]], axis=0)
    return {"resid_pre": pres, "resid_mid": mids, "resid_post": posts, "mlp_in": mlp_ins}


def final_from_probes(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    deltas: Float[Array, "points d"],
    z_deltas: Float[Array, "layers q"] | None = None,
) -> Float[Array, "b s d"]:
    """Final residual with `deltas[p]` added at every valid position of the point of row `p`
    (rows of `points.value_points`) and `z_deltas[b]` at every valid position of `z[b]`."""
    n_layers = model.config.n_layers
    at = lambda site: deltas[np.array([pts.row(Point(site, b), n_layers) for b in range(n_layers)])][:, None, None]
    z_at = None if z_deltas is None else z_deltas[:, None, None]
    final, *_ = _run(model, tokens, mask, at("resid_pre"), at("resid_mid"), None, z_at)
    return final + (deltas[pts.row(pts.final_point(n_layers), n_layers)] * mask[..., None]).astype(final.dtype)


def points_from_embedding(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    delta0: Float[Array, "b s d"],
    with_input_norms: bool = False,
) -> Float[Array, "key_points b s d"]:
    """Every point of `points.key_points(L, with_input_norms)`, in that order, with `delta0`
    added at `resid_pre[0]`."""
    return points_and_sites_from_embedding(model, tokens, mask, delta0, with_input_norms)[0]


def points_and_sites_from_embedding(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    delta0: Float[Array, "b s d"],
    with_input_norms: bool = False,
    sites: tuple[Point, ...] = (),
) -> tuple[Float[Array, "key_points b s d"], Float[Array, "b s width"]]:
    """`points_from_embedding`, and the module outputs `sites` (static) side by side along the
    last axis (`[b, s, 0]` without sites)."""
    n_layers, d = model.config.n_layers, model.config.d_model
    zeros = jnp.zeros((n_layers, 1, 1, d), jnp.float32)
    final, pres, mids, mlp_ins, outputs = _run(model, tokens, mask, zeros, zeros, delta0, module_outputs=bool(sites))
    by_site = _by_site(pres, mids, mlp_ins, final)
    residual = residual_stack(by_site, n_layers)
    norms = pts.INPUT_NORMS_WITH_JACOBIAN if with_input_norms else ()
    normed = {norm: through_input_norm(residual, norm) for norm in norms}

    def source(point: Point):
        if point.norm is not None:
            return normed[point.norm], pts.row(point.residual, n_layers)
        if point.site == "mlp_in":
            return mlp_ins, point.layer
        return residual, pts.row(point, n_layers)

    stack = assemble(pts.key_points(n_layers, with_input_norms), source)
    return stack, side_by_side(outputs, sites, final)


def side_by_side(
    outputs: dict | None, sites: tuple[Point, ...], like: Float[Array, "b s d"]
) -> Float[Array, "b s width"]:
    """The module outputs `sites` picked from `_run`'s per-block `outputs` (`{site: [L, b, s,
    width]}`), concatenated along the last axis; `[b, s, 0]` without sites."""
    if not sites:
        return jnp.zeros((*like.shape[:-1], 0), like.dtype)
    assert outputs is not None  # `_run` records module outputs whenever there are sites
    return jnp.concatenate([outputs[p.site][p.layer] for p in sites], axis=-1)


def assemble(points, source) -> Float[Array, " points *rest"]:
    """`points` stacked from `source(point) = (array, index)`: runs of consecutive indices into
    one array are taken as one slice, so that whole arrays are concatenated as they are."""
    parts, run = [], None
    for point in points:
        array, index = source(point)
        if run is not None and run[0] is array and run[2] == index:
            run[2] += 1
        else:
            if run is not None:
                parts.append(run[0][run[1] : run[2]])
            run = [array, index, index + 1]
    assert run is not None, "no points to assemble"
    parts.append(run[0][run[1] : run[2]])
    return jnp.concatenate(parts, axis=0)


def clean_states(
    model: Transformer, tokens: Int[Array, "b s"], mask: Bool[Array, "b s"]
) -> tuple[Float[Array, "b s d"], Float[Array, "L b s d"], Float[Array, "L b s d"]]:
    """The clean final residual and every block's `resid_pre` and `resid_mid`."""
    n_layers, d = model.config.n_layers, model.config.d_model
    zeros = jnp.zeros((n_layers, 1, 1, d), jnp.float32)
    final, pres, mids, *_ = _run(model, tokens, mask, zeros, zeros, None)
    return final, pres, mids


def clean_module_inputs(model: Transformer, tokens, mask) -> Float[Array, "modules b s d"]:
    """Each module's clean input: `resid_pre[b]` for attention `b`, `resid_mid[b]` for MLP `b`."""
    final, pres, mids = clean_states(model, tokens, mask)
    return residual_stack(_by_site(pres, mids, None, final), model.config.n_layers)[:-1]


def module_outputs(
    model: Transformer,
    inputs: Float[Array, "modules b s d"],
    mask: Bool[Array, "b s"],
    deltas: Float[Array, "modules d"],
) -> Float[Array, "modules b s d"]:
    """Each module's output at its clean input plus `deltas[m]` at every valid position."""
    m = mask[..., None].astype(jnp.float32)
    n_layers = model.config.n_layers
    # rows[b, i]: the module of kind MODULE_KINDS[i] of block b.
    rows = np.array([[pts.module_row(Module(kind, b), n_layers) for kind in pts.MODULE_KINDS] for b in range(n_layers)])
    output = {
        "attn": lambda block, meta, h: attention_batch(block, meta, h, mask),
        "mlp": lambda block, meta, h: mlp_residual(block, h),
    }

    def block_modules(block, meta, h, dh):
        kinds = enumerate(pts.MODULE_KINDS)
        return jnp.stack([output[kind](block, meta, h[i] + (dh[i] * m).astype(h.dtype)) for i, kind in kinds])

    # Modules are listed block by block (`points.modules`): the rows are a reshape, which
    # keeps the traced program (and its rounding) that of a plain reshape.
    assert (rows.reshape(-1) == np.arange(rows.size)).all()
    pairs = inputs.reshape(*rows.shape, *inputs.shape[1:])
    out = jax.vmap(block_modules)(model.blocks, model.meta, pairs, deltas.reshape(*rows.shape, 1, 1, -1))
    return out.reshape(inputs.shape)


def clean_z(
    model: Transformer, tokens, mask, layers: tuple[int, ...]
) -> tuple[Float[Array, "n b s d"], Float[Array, "n b s q"]]:
    """The clean `resid_pre` and `z` of blocks `layers` (static): where the first-order hops
    into and out of `z` are linearized."""
    n_layers, d = model.config.n_layers, model.config.d_model
    zeros = jnp.zeros((n_layers, 1, 1, d), jnp.float32)
    _, pres, _, _, outputs = _run(model, tokens, mask, zeros, zeros, None, module_outputs=True)
    pick = np.asarray(layers, int)
    assert outputs is not None  # asked for with `module_outputs=True`
    return pres[pick], outputs["z"][pick]


def z_from_input(
    model: Transformer,
    layer: Int[Array, ""] | int,
    pre: Float[Array, "b s d"],
    mask: Bool[Array, "b s"],
    delta: Float[Array, " d"],
) -> Float[Array, "b s q"]:
    """Block `layer`'s `z` when `delta` is added to its input `pre` at every valid position:
    the one hop a key vector at `z` takes back to the residual (docs/definitions.md section 1b)."""
    block, meta = model.block(layer)
    return attention_z_batch(block, meta, pre + (delta * mask[..., None]).astype(pre.dtype), mask)


def output_from_z(
    model: Transformer,
    layer: Int[Array, ""] | int,
    z: Float[Array, "b s q"],
    mask: Bool[Array, "b s"],
    delta: Float[Array, " q"],
) -> Float[Array, "b s d"]:
    """What block `layer`'s attention adds to the residual when `delta` is added to its `z`
    at every valid position: the one hop a value vector at `z` takes into the residual."""
    block, _ = model.block(layer)
    return attention_output(block, z + (delta * mask[..., None]).astype(z.dtype))


def masked_sum(x: Float[Array, "*lead b s d"], mask: Bool[Array, "b s"]) -> Float[Array, "*lead d"]:
    """Sum over valid positions, accumulated in float32. Pad positions are dropped, not
    multiplied by zero: a pad whose embedding is zero has a NaN norm Jacobian."""
    return jnp.where(mask[..., None], x.astype(jnp.float32), 0.0).sum(axis=(-3, -2))
