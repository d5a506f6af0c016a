"""Dense transport operators: every feature of every layer from two linearized sweeps.

`TransportOperators` holds, for one model and token sample (docs/definitions.md section 2):

- `value[p]`: rows of `M_p`, the mean transport from point `p` (`p = points.row(point)`, in
  the order of `points.value_points`) to the final residual, from one reverse sweep with the
  `d_model` basis cotangents (all points at once);
- `key[p]`: rows of `K_p`, the mean pull-back from point `p` (order of `points.key_points`)
  to the embedding, from one forward sweep with the basis tangents (all points at once);
- `first_order[m]`: module `m`'s (`points.module_row`) mean Jacobian `A_m` over valid positions, and
  `first_order_all[m]` the same with outputs summed over *all* positions, pads included
  (the reference's padding convention for the first-order key lens, docs/definitions.md section 1).

Every operator is applied to a batch of feature vectors as `X @ op.T`. Sums over positions
accumulate in float32 over token chunks; `n_tokens` is the number of valid tokens.

Two sweep orders give the same operators: basis-major (one basis vector at a time through
the whole linearized model; least memory) and block-major (`blockwise`: all basis vectors
at once, one block at a time, MLPs as explicit per-position Jacobians; fewer FLOPs when the
tangents fit). Block-major sweeps can also stop at the points a job needs
(`value_from_point`, `key_to_point`); `TransportOperators.covers` says which points hold rows.

Each token chunk's step adds its sums into a float32 accumulator that it receives donated, so
the `[points, d, d]` sums are updated in place (docs/definitions.md section 2), and nothing returns to
the host until the caller reads the operators: the loop over token chunks only dispatches.
"""

from __future__ import annotations

import functools
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jaxtyping import Array, Bool, Float, Int, PyTree

from qlens_jax import memory, sharding
from qlens_jax.globs import unglobbed
from qlens_jax.lens import auto, blockwise, points as pts, transport
from qlens_jax.lens.chunks import ChunkPlan, iter_token_chunks, plan_chunks
from qlens_jax.lens.points import Point
from qlens_jax.lens.validation import LensRequestError
from qlens_jax.models import Transformer
from qlens_jax.models.config import ModelConfig
from qlens_jax.numerics import applies_precision
from qlens_jax.progress import progress

SWEEPS = ("value", "key", "first_order")


class TransportOperators(eqx.Module):
    value: Float[Array, "points d d"] | None
    key: Float[Array, "key_points d d"] | None
    first_order: Float[Array, "modules d d"] | None
    first_order_all: Float[Array, "modules d d"] | None
    n_tokens: int = eqx.field(static=True)
    # Residual points the value rows start at (those before are not computed) and the last
    # residual point the key rows reach (None: all).
    value_from_point: int = eqx.field(static=True, default=0)
    key_to_point: int | None = eqx.field(static=True, default=None)
    # Module outputs (`points.MODULE_OUTPUT_SITES`) the sweeps recorded, side by side along
    # the last axis (`points.site_columns`): the value side holds the `z` points of `sites`
    # (`points.value_sites`), the key side all of them.
    sites: tuple[Point, ...] = eqx.field(static=True, default=())
    value_at_sites: Float[Array, "d value_width"] | None = None
    key_at_sites: Float[Array, "d key_width"] | None = None
    # First-order hops at the `z` points of `sites` (`[n_z, q, d]`, applied as `X @ hop[i].T`):
    # into the residual (value side) and back to the block input, summed over valid / all
    # output positions (key side, as `first_order` / `first_order_all`).
    z_hop_value: Float[Array, "n_z q d"] | None = None
    z_hop_key: Float[Array, "n_z q d"] | None = None
    z_hop_key_all: Float[Array, "n_z q d"] | None = None

    def covers(self, side: str, point: Point, n_layers: int) -> bool:
        """Whether rows for `point` (value or key side) were computed."""
        if point.site in pts.MODULE_OUTPUT_SITES:
            recorded = pts.value_sites(self.sites) if side == "value" else self.sites
            at_sites = self.value_at_sites if side == "value" else self.key_at_sites
            if point not in recorded or at_sites is None:
                return False
        if side == "value":
            return (
                self.value is not None and pts.row(pts.flows_into(point, n_layers), n_layers) >= self.value_from_point
            )
        if self.key is None:
            return False
        return self.key_to_point is None or pts.row(pts.flows_into(point, n_layers), n_layers) <= self.key_to_point

    def operator(self, side: str, point: Point, n_layers: int, config=None) -> Float[Array, "d w"]:
        """The operator of `point` on the value or key side, applied as `X @ op.T`: `[d, d]`
        for residual points, `[d, width]` for module outputs (`config` needed for those)."""
        if point.site in pts.MODULE_OUTPUT_SITES:
            recorded = pts.value_sites(self.sites) if side == "value" else self.sites
            columns = pts.site_columns(recorded, config)[point]
            at_sites = self.value_at_sites if side == "value" else self.key_at_sites
            assert at_sites is not None  # `covers`: callers check first
            return at_sites[:, columns]
        rows = self.value if side == "value" else self.key
        assert rows is not None  # `covers`: callers check first
        return rows[pts.row(point, n_layers)]

    def z_hop(self, side: str, point: Point, mask_seed: bool = True) -> Float[Array, "d q"]:
        """The first-order hop at `z` point `point` as an operator (`X @ op.T`): `[d, q]`."""
        index = pts.value_sites(self.sites).index(point)
        hops = self.z_hop_value if side == "value" else (self.z_hop_key if mask_seed else self.z_hop_key_all)
        assert hops is not None  # the first-order sweep ran with `z` sites
        return hops[index].T


@eqx.filter_jit
def value_sweep_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    basis: Int[Array, " r"],
    tangent_chunk: int,
    sites: tuple[Point, ...] = (),
) -> tuple[Float[Array, "points r d"], Float[Array, "r width"]]:
    """Position-summed top-down cotangents at every point, for each basis cotangent `e_i`, i in
    `basis`; and at the `z` points of `sites` side by side (`points.value_sites`)."""
    c = model.config
    d, z_sites = c.d_model, pts.value_sites(sites)
    zeros = jnp.zeros((pts.n_points(c.n_layers), d), jnp.float32)
    z_zeros = jnp.zeros((c.n_layers, c.n_heads * c.head_dim), jnp.float32) if z_sites else None
    _, pull = jax.vjp(
        lambda deltas, z_deltas: transport.final_from_probes(model, tokens, mask, deltas, z_deltas), zeros, z_zeros
    )
    dtype = model.embed_tokens.dtype

    def one(i):
        at_points, at_z = pull(transport.basis_tangents(i, d, mask, dtype))
        return at_points, (jnp.concatenate([at_z[p.layer] for p in z_sites], axis=-1) if z_sites else None)

    rows, at_sites = jax.lax.map(one, basis, batch_size=tangent_chunk)
    return jnp.swapaxes(rows, 0, 1), _no_sites(basis) if at_sites is None else at_sites


def _no_sites(basis: Int[Array, " r"]) -> Float[Array, "r 0"]:
    """The site sums of a sweep that records no module outputs (made outside `lax.map`, which
    cannot batch zero-sized outputs)."""
    return jnp.zeros((basis.shape[0], 0), jnp.float32)


@eqx.filter_jit
def key_sweep_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    basis: Int[Array, " r"],
    tangent_chunk: int,
    with_input_norms: bool = False,
    sites: tuple[Point, ...] = (),
) -> tuple[Float[Array, "key_points r d"], Float[Array, "r width"]]:
    """Position-summed bottom-up tangents at every point, for each basis tangent `e_j`, j in
    `basis`; and at the module outputs `sites` side by side."""
    d = model.config.d_model
    zeros = jnp.zeros((*tokens.shape, d), jnp.float32)

    def stream(d0):
        stack, values = transport.points_and_sites_from_embedding(model, tokens, mask, d0, with_input_norms, sites)
        return transport.masked_sum(stack, mask), (transport.masked_sum(values, mask) if sites else None)

    _, push = jax.linearize(stream, zeros)
    cols, at_sites = jax.lax.map(lambda j: push(transport.basis_tangents(j, d, mask)), basis, batch_size=tangent_chunk)
    return jnp.swapaxes(cols, 0, 1), _no_sites(basis) if at_sites is None else at_sites


@eqx.filter_jit
def first_order_sweep_chunk(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    basis: Int[Array, " r"],
    tangent_chunk: int,
    z_layers: tuple[int, ...] = (),
):
    """Each module's Jacobian applied to each broadcast basis vector `e_j` (j in `basis`),
    summed over valid positions and over all positions: two `[modules, d, r]` arrays; and the
    first-order hops at `z` of blocks `z_layers` (`[n_z, q, r]` each): out of `z` into the
    residual (rows from the basis cotangents), and into `z` from the block input, summed over
    valid and over all positions."""
    c = model.config
    d, n_modules = c.d_model, len(pts.modules(c.n_layers))
    inputs = transport.clean_module_inputs(model, tokens, mask)

    def outputs(deltas):
        out = transport.module_outputs(model, inputs, mask, deltas)
        return transport.masked_sum(out, mask), out.astype(jnp.float32).sum(axis=(1, 2))

    _, push = jax.linearize(outputs, jnp.zeros((n_modules, d), jnp.float32))
    tangent = lambda j: jnp.broadcast_to(jax.nn.one_hot(j, d, dtype=jnp.float32), (n_modules, d))
    valid, every = jax.lax.map(lambda j: push(tangent(j)), basis, batch_size=tangent_chunk)
    hops = _z_hops(model, tokens, mask, basis, tangent_chunk, z_layers)
    # [j, m, i] -> A[m, i, j]
    return (jnp.transpose(valid, (1, 2, 0)), jnp.transpose(every, (1, 2, 0)), *hops)


def _z_hops(
    model: Transformer,
    tokens: Int[Array, "b s"],
    mask: Bool[Array, "b s"],
    basis: Int[Array, " r"],
    tangent_chunk: int,
    z_layers: tuple[int, ...],
):
    """`first_order_sweep_chunk`'s `z` hops: three `[n_z, q, r]` arrays."""
    c = model.config
    d, q = c.d_model, c.n_heads * c.head_dim
    if not z_layers:
        empty = jnp.zeros((0, q, basis.shape[0]), jnp.float32)
        return empty, empty, empty
    pres, zs = transport.clean_z(model, tokens, mask, z_layers)
    into, from_valid, from_all = [], [], []
    for index, layer in enumerate(z_layers):
        _, pull = jax.vjp(
            lambda dz: transport.output_from_z(model, layer, zs[index], mask, dz), jnp.zeros(q, jnp.float32)
        )
        cotangent = lambda i: transport.basis_tangents(i, d, mask, zs.dtype)
        into.append(jax.lax.map(lambda i: pull(cotangent(i))[0], basis, batch_size=tangent_chunk))
        _, push = jax.linearize(
            lambda dh: transport.z_from_input(model, layer, pres[index], mask, dh), jnp.zeros(d, jnp.float32)
        )
        sums = lambda out: (transport.masked_sum(out, mask), out.astype(jnp.float32).sum(axis=(0, 1)))
        valid, every = jax.lax.map(
            lambda j: sums(push(jax.nn.one_hot(j, d, dtype=jnp.float32))), basis, batch_size=tangent_chunk
        )
        from_valid.append(valid)
        from_all.append(every)
    # [n_z, r, q] -> [n_z, q, r]
    return tuple(jnp.swapaxes(jnp.stack(parts), 1, 2) for parts in (into, from_valid, from_all))


FUNCTIONS = {"value": value_sweep_chunk, "key": key_sweep_chunk, "first_order": first_order_sweep_chunk}
BLOCKWISE = {
    "value": blockwise.value_sweep_blockwise,
    "key": blockwise.key_sweep_blockwise,
    "value+key": blockwise.both_sweeps_blockwise,
}
SWEEP_ORDERS = auto.SWEEP_ORDERS
# Where the basis axis of each sweep's outputs lies (split over the mesh like `basis`).
_STACK_SPEC = sharding.spec(None, "basis", None)
_SITES_SPEC = sharding.spec("basis", None)
_FIRST_ORDER_SPEC = sharding.spec(None, None, "basis")
OUT_SPECS = {
    "value": (_STACK_SPEC, _SITES_SPEC),
    "key": (_STACK_SPEC, _SITES_SPEC),
    "value+key": ((_STACK_SPEC, _SITES_SPEC), (_STACK_SPEC, _SITES_SPEC)),
    "first_order": (_FIRST_ORDER_SPEC,) * 5,
}


def sweep_output_shapes(
    name: str, config: ModelConfig, with_input_norms: bool = False, sites: tuple[Point, ...] = ()
) -> PyTree[jax.ShapeDtypeStruct]:
    """The float32 shapes of sweep `name`'s outputs (`jax.ShapeDtypeStruct`s), all `d_model`
    basis vectors included: the layout of the accumulator that `sharded_sweep`'s step adds
    into. The value and key sweeps give a `[points, d, d]` stack and the module outputs
    `sites` side by side `[d, width]`; the first-order sweep two `[modules, d, d]` arrays and
    three `[n_z, q, d]` hops."""
    n_layers, d = config.n_layers, config.d_model
    shape = lambda *dims: jax.ShapeDtypeStruct(dims, jnp.float32)
    width = lambda points: sum(pts.site_width(p, config) for p in points)
    z_sites = pts.value_sites(sites)
    value = (shape(pts.n_points(n_layers), d, d), shape(d, width(z_sites)))
    key = (shape(len(pts.key_points(n_layers, with_input_norms)), d, d), shape(d, width(sites)))
    modules = shape(len(pts.modules(n_layers)), d, d)
    hop = shape(len(z_sites), config.n_heads * config.head_dim, d)
    return {"value": value, "key": key, "value+key": (value, key), "first_order": (modules, modules, hop, hop, hop)}[
        name
    ]


@functools.cache
def _filler(name: str, mesh: Mesh, config: ModelConfig, with_input_norms: bool, sites: tuple[Point, ...]):
    shapes = sweep_output_shapes(name, config, with_input_norms, sites)
    fill = lambda: jax.tree.map(lambda s: jnp.full(s.shape, -0.0, s.dtype), shapes)
    return jax.jit(fill, out_shardings=sharding.shardings(mesh, OUT_SPECS[name]))


def empty_sums(
    name: str, mesh: Mesh, config: ModelConfig, with_input_norms: bool = False, sites: tuple[Point, ...] = ()
) -> PyTree[Float[Array, "..."]]:
    """An accumulator for sweep `name` (`sweep_output_shapes`), created on the devices, placed
    as the sweep's outputs and filled with -0.0, the identity of IEEE addition (`-0.0 + x` is
    `x` for every `x`, +0.0 included), so that the first step's sums come out bit for bit."""
    return _filler(name, mesh, config, with_input_norms, tuple(sites))()


@functools.partial(jax.jit, donate_argnums=0)
def scaled(sums: PyTree[Float[Array, "..."]], scale: Float[Array, ""] | float) -> PyTree[Float[Array, "..."]]:
    """Every array of `sums` times `scale`, written over `sums` (donated)."""
    return jax.tree.map(lambda x: x * scale, sums)


def _add(totals, sums):
    """`totals + sums` leaf by leaf; refuses an accumulator laid out unlike the sums (at trace
    time), which would otherwise broadcast or be copied instead of updated in place."""
    layout = lambda tree: jax.tree.map(lambda x: (x.shape, x.dtype), tree)
    if layout(totals) != layout(sums):
        raise ValueError(f"the sweep's accumulator {layout(totals)} does not match its sums {layout(sums)}")
    return jax.tree.map(jnp.add, totals, sums)


@functools.cache
def sharded_sweep(
    name: str,
    mesh: Mesh,
    tangent_chunk: int,
    with_input_norms: bool = False,
    weights_sharded: bool = False,
    blocks: tuple[int, int] | None = None,
    sites: tuple[Point, ...] = (),
):
    """Sweep `name` over the mesh: token chunks split over `data` (contributions summed across
    it), basis vectors split over `feature`, outputs with the basis axis split over `feature`.

    The step is `sweep_step(model, tokens, mask, basis, totals=None)`. With `totals` (an
    accumulator laid out as the outputs, e.g. from `empty_sums`) it returns `totals + sums`,
    computed into `totals`' buffers, which it takes donated (they are invalid afterwards);
    without, the sums.

    Replicated weights: a `shard_map`, each device linearizing its own chunk, one `psum`.
    Sharded weights (`sharding.shard_weights`): the same chunk function under plain `jit`
    (GSPMD), which keeps the weights split as placed and inserts the collectives (the masked
    sums over positions reduce across `data`; the MLP and vocabulary shards across `feature`).
    The basis loop (`lax.map`) is not partitioned then: each `feature` device runs every basis
    vector through its share of the MLP and embedding work.
    `blocks = (first, stop)`: the block-major sweep over blocks `first .. stop - 1` (value
    sweeps start at the top, key sweeps at the embedding; "value+key", both sweeps in one step
    sharing MLP Jacobians, the value sweep from `first` and the key sweep up to `stop`); None:
    the basis-major sweep. `sites`: the module outputs to record (`sweep_output_shapes`).
    """
    z_layers = tuple(p.layer for p in pts.value_sites(sites))
    if blocks is None:
        function = FUNCTIONS[name]
        extra = {"value": (sites,), "key": (with_input_norms, sites), "first_order": (z_layers,)}[name]
    else:
        first, stop = blocks
        function = BLOCKWISE[name]
        extra = {
            "value": (first, sites),
            "key": (with_input_norms, stop, sites),
            "value+key": (first, with_input_norms, stop, sites),
        }[name]
    run = lambda model, tokens, mask, basis: function(model, tokens, mask, basis, tangent_chunk, *extra)
    if weights_sharded:
        sums = run
    else:

        def local(model, tokens, mask, basis):
            return jax.tree.map(lambda x: jax.lax.psum(x, sharding.mesh_axes("batch")), run(model, tokens, mask, basis))

        in_specs = (sharding.spec(), sharding.spec("batch"), sharding.spec("batch"), sharding.spec("basis"))
        # check_vma=False: the linearizations mix values that vary over different mesh axes.
        sums = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=OUT_SPECS[name], check_vma=False)

    def sweep_step(model, tokens, mask, basis, totals=None):
        out = sums(model, tokens, mask, basis)
        return out if totals is None else _add(totals, out)

    return jax.jit(sweep_step, out_shardings=sharding.shardings(mesh, OUT_SPECS[name]), donate_argnames="totals")


@applies_precision
def transport_operators(
    model: Transformer,
    tokens: Int[Array, "batch seq"] | np.ndarray,
    mask: Bool[Array, "batch seq"] | np.ndarray | None = None,
    *,
    sweeps: tuple[str, ...] = SWEEPS,
    plan: ChunkPlan | None = None,
    memory_budget_gb: float | None = None,
    mesh: Mesh | None = None,
    sequences_per_chunk: int | None = None,
    with_input_norms: bool = False,
    shard_weights: bool | None = None,
    sweep_order: str = "auto",
    value_from_point: Point | int | None = None,
    key_to_point: Point | int | None = None,
    sites: tuple[Point, ...] = (),
    precision: str = "float32",
    quiet: bool = True,
) -> TransportOperators:
    """The dense operators of `model` on this token sample (see the module docstring).

    `mesh` (default: all devices on the `data` axis, see `qlens_jax.sharding`) spreads token
    chunks over `data` and basis vectors over `feature`; the result is the same to float32
    rounding, with the basis axis of each operator sharded over `feature`.
    `shard_weights` splits the model's vocabulary matrices and MLP units over `feature`
    (`sharding.shard_weights`, for models that do not fit one device); False replicates them;
    None (default) shards when `sharding.should_shard_weights` finds them too large.
    `with_input_norms` adds key operators for reading through SAE input normalizations
    (`exact_norm_jacobian` for OpenAI-style `layer_norm` SAEs).
    `sweep_order`: "blockwise", "basis" (see the module docstring) or "auto" (blockwise when
    `blockwise.worth_it` and one sequence's tangents fit the memory budget).
    `value_from_point` / `key_to_point`: residual points (`points.residual_point`, or their
    rows `points.row`) that bound what the caller will read (None: the first / the final
    residual); a block-major sweep skips the blocks beyond them.
    `sites`: module outputs (`points.MODULE_OUTPUT_SITES`) whose operators to record as well,
    within those bounds: the key sweep records all of them, the value sweep and the first-order
    sweep the `z` points (`TransportOperators.value_at_sites`, `.key_at_sites`, `.z_hop_*`).
    `precision`: how the sweeps' matrix products multiply (`qlens_jax.numerics`).
    """
    from qlens_jax.lens.validation import check_tokens

    tokens, mask = check_tokens(model, tokens, mask)
    sites = _check_sites(sites, model.config.n_layers)
    unknown = set(sweeps) - set(SWEEPS)
    if unknown:
        raise LensRequestError(f"unknown sweep(s) {sorted(unknown)}; choose from {SWEEPS}")
    if sweep_order not in SWEEP_ORDERS:
        raise LensRequestError(f"unknown sweep_order {sweep_order!r}; choose from {SWEEP_ORDERS}")
    n_layers = model.config.n_layers
    value_from_point = _residual_bound("value_from_point", value_from_point, pts.value_points(n_layers)[0], n_layers)
    key_to_point = _residual_bound("key_to_point", key_to_point, pts.final_point(n_layers), n_layers)
    mesh = mesh or sharding.make_mesh()
    n_data, n_basis = sharding.axis_size(mesh, "batch"), sharding.axis_size(mesh, "basis")
    d = model.config.d_model
    if d % n_basis:
        raise LensRequestError(f"the mesh's feature axis ({n_basis} devices) must divide d_model ({d})")
    plan = plan or plan_chunks(
        model, tokens.shape, memory_budget_gb, sequences_per_chunk, device=memory.planning_device(mesh)
    )
    n_tokens = int(mask.sum())
    model = sharding.place_weights(model, mesh, shard_weights)
    weights_sharded = sharding.vocab_sharded(model)
    basis = sharding.put(np.arange(d), mesh, "basis")
    # Sequences per step, one chunk per data device; never more than the sample fills, so
    # that data devices do not linearize padding rows.
    per_device = min(plan.sequences_per_chunk, -(-tokens.shape[0] // n_data))
    budget_gb = memory_budget_gb or memory.default_budget_gb(memory.planning_device(mesh))
    fitting = blockwise.sequences_that_fit(model, tokens.shape[1], d // n_basis, budget_gb)
    use_blockwise = auto.sweep_order(sweep_order, model.config, d // n_basis, fitting) == "blockwise"
    # Block-major value and key sweeps hold every basis vector's tangents: fewer sequences per step.
    block_range = (
        {
            "value": (pts.value_first_block(value_from_point, n_layers), n_layers),
            "key": (0, pts.key_block_stop(key_to_point, n_layers)),
        }
        if use_blockwise
        else {}
    )
    jobs = [name for name in SWEEPS if name in sweeps]
    shared = _shared_blocks(block_range) if {"value", "key"} <= set(jobs) else 0
    # The key sweep keeps the Jacobians of every block it passes.
    kept = block_range["key"][1] if shared else 0
    fitting_shared = (
        blockwise.sequences_that_fit(model, tokens.shape[1], d // n_basis, budget_gb, kept) if shared else 0
    )
    if fitting_shared >= 1:
        # Both sweeps in one step, each MLP Jacobian formed once (`both_sweeps_blockwise`).
        jobs = ["value+key"] + [name for name in jobs if name not in ("value", "key")]
        block_range["value+key"] = (block_range["value"][0], block_range["key"][1])
    totals: dict[str, tuple] = {}
    for name in jobs:
        blocks = block_range.get(name)
        fits = fitting_shared if name == "value+key" else fitting
        group = (max(1, min(per_device, fits)) if blocks else per_device) * n_data
        sweep = sharded_sweep(name, mesh, plan.tangent_chunk, with_input_norms, weights_sharded, blocks, sites)
        steps = list(iter_token_chunks(tokens, mask, group))
        # Dispatch only: every step adds into `sums` in place, and nothing is read back here.
        sums = empty_sums(name, mesh, model.config, with_input_norms, sites)
        for step_tokens, step_mask in progress(steps, desc=f"{name} sweep", quiet=quiet, unit="step"):
            step_tokens = sharding.put(step_tokens, mesh, "batch", None)
            step_mask = sharding.put(step_mask, mesh, "batch", None)
            sums = sweep(model, step_tokens, step_mask, basis, sums)
        totals[name] = sums
    if "value+key" in totals:
        totals["value"], totals["key"] = totals.pop("value+key")
    totals = scaled(totals, 1.0 / n_tokens)
    value, key = totals.get("value", (None, None)), totals.get("key", (None, None))
    first = totals.get("first_order", (None,) * 5)
    return TransportOperators(
        value=value[0],
        key=key[0],
        first_order=first[0],
        first_order_all=first[1],
        n_tokens=n_tokens,
        value_from_point=pts.row(pts.block_start(block_range["value"][0], n_layers), n_layers) if use_blockwise else 0,
        key_to_point=pts.row(pts.block_start(block_range["key"][1], n_layers), n_layers) if use_blockwise else None,
        sites=sites,
        value_at_sites=value[1],
        key_at_sites=key[1],
        z_hop_value=first[2],
        z_hop_key=first[3],
        z_hop_key_all=first[4],
    )


def _check_sites(sites, n_layers: int) -> tuple[Point, ...]:
    """`sites` as a sorted tuple of distinct module-output points of this model; refuses anything else."""
    sites = tuple(sorted(set(sites)))
    for point in sites:
        if not isinstance(point, Point) or point.site not in pts.MODULE_OUTPUT_SITES or not 0 <= point.layer < n_layers:
            raise LensRequestError(
                f"sites must be module outputs {pts.MODULE_OUTPUT_SITES} of blocks 0 .. {n_layers - 1}; got {point}"
            )
    return sites


def _residual_bound(name: str, bound: Point | int | None, default: Point, n_layers: int) -> Point:
    """`bound` as a residual `Point` (an int is its row), `default` for None; refuses anything else."""
    if bound is None:
        return default
    residual = pts.value_points(n_layers)
    point = residual[bound] if isinstance(bound, (int, np.integer)) and 0 <= bound < len(residual) else bound
    if point not in residual:
        raise LensRequestError(f"{name}={bound} is not a residual point of this model (rows 0 .. {len(residual) - 1})")
    return point


def _shared_blocks(block_range: dict) -> int:
    """Blocks that both the block-major value and key sweeps pass (0 without block-major sweeps)."""
    if not block_range:
        return 0
    return max(0, block_range["key"][1] - block_range["value"][0])


_SAVED_ARRAYS = (
    "value",
    "key",
    "first_order",
    "first_order_all",
    "value_at_sites",
    "key_at_sites",
    "z_hop_value",
    "z_hop_key",
    "z_hop_key_all",
)


def _this_process_only():
    """Orbax options for a checkpoint written and read by this process alone (in a multi-process
    job only process 0 keeps the run folder; the others must not wait for it in a barrier)."""
    import orbax.checkpoint as ocp

    me = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


def save_operators(operators: TransportOperators, directory: str | Path) -> Path:
    """Save operators with Orbax (the directory must not exist yet), from this process alone;
    the arrays must be addressable here (`sharding.to_host` them first in a multi-process job)."""
    import json

    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    if directory.exists() and any(directory.iterdir()):
        raise FileExistsError(f"{directory} exists and is not empty; choose a new directory")
    arrays = {k: getattr(operators, k) for k in _SAVED_ARRAYS}
    arrays = {k: v for k, v in arrays.items() if v is not None and v.size}
    arrays = {k: sharding.to_host(v) for k, v in arrays.items()}
    with (
        unglobbed(directory) as literal,
        ocp.StandardCheckpointer(multiprocessing_options=_this_process_only()) as checkpointer,
    ):
        checkpointer.save(literal / "arrays", arrays)  # Orbax globs below the folder: `unglobbed`
    (directory / "operators.json").write_text(
        json.dumps(
            {
                "n_tokens": operators.n_tokens,
                "arrays": sorted(arrays),
                "value_from_point": operators.value_from_point,
                "key_to_point": operators.key_to_point,
                "sites": [[p.site, p.layer] for p in operators.sites],
            }
        )
    )
    return directory


def load_operators(directory: str | Path) -> TransportOperators:
    import json

    import orbax.checkpoint as ocp

    directory = Path(directory).absolute()
    meta_path = directory / "operators.json"
    if not meta_path.exists():
        raise FileNotFoundError(f"{directory} holds no saved transport operators (no operators.json)")
    meta = json.loads(meta_path.read_text())
    with (
        unglobbed(directory) as literal,
        ocp.StandardCheckpointer(multiprocessing_options=_this_process_only()) as checkpointer,
    ):
        arrays = checkpointer.restore(literal / "arrays")
    get = lambda k: jnp.asarray(arrays[k]) if k in arrays else None
    return TransportOperators(
        get("value"),
        get("key"),
        get("first_order"),
        get("first_order_all"),
        meta["n_tokens"],
        value_from_point=meta.get("value_from_point", 0),
        key_to_point=meta.get("key_to_point"),
        sites=tuple(Point(site, layer) for site, layer in meta.get("sites", [])),
        **{k: get(k) for k in _SAVED_ARRAYS[4:]},
    )
