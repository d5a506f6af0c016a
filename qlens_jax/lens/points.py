"""Typed points of the forward pass and the residual modules between them.

A `Point` names a tensor of the forward pass at every position: a residual point
(`resid_pre[b]`, `resid_mid[b]`, the final residual `resid_post[L-1]`), an MLP's normalized
input (`mlp_in[b]`, where transcoders read), a residual point seen through a dictionary's
own per-token input normalization (`norm`, one of `INPUT_NORMS_WITH_JACOBIAN`), or a module
output (`MODULE_OUTPUT_SITES`: the heads' outputs `z[b]` before the output projection, the
attention output `attn_out[b]` and the MLP output `mlp_out[b]` as added to the residual, after
any post-norm). A `Module` (attention or MLP of a block) reads one residual point and writes
the next:

    resid_pre[b] --attn b (z[b] -> attn_out[b])--> resid_mid[b] --mlp b (mlp_out[b])--> resid_post[b] = resid_pre[b + 1]

A parallel block (GPT-NeoX, docs/definitions.md section 1c) has no residual between its modules; it keeps
the same rows, with `resid_mid[b]` the MLP's input, a copy of `resid_pre[b]` that only the MLP
reads, and the attention writing straight into `resid_post[b]`:

    resid_pre[b] --attn b--> resid_post[b],   resid_pre[b] = resid_mid[b] --mlp b--> resid_post[b]

so its value row at `resid_mid[b]` passes the MLP alone, and its key row there is that of
`resid_pre[b]`. No dictionary may write there (`dictionary_points` refuses it); the functions
that depend on the block shape take `parallel`.

Module outputs have no rows in the operator stacks (`z` is not `d_model` wide): the sweeps
record the ones a request reads in a separate array (`operators.TransportOperators`).

The sweeps record the points of `value_points` (value side) and `key_points` (key side), in
that order: the row of a point in the operator arrays is its position in `key_points(L, True)`
(`row`), of which `value_points(L)` is a prefix and the residual points without norms come
first. This ordered list is the only definition of the saved layout; a new site is a new
entry in it. `modules(L)` lists the modules in the order of the first-order operators.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from qlens_jax.lens.validation import LensRequestError

INPUT_NORMS_WITH_JACOBIAN = ("layer_norm", "constant_norm_rescale")
# Sites of one block in forward order; `mlp_in` is computed from `resid_mid`.
SITES = ("resid_pre", "z", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")
RESIDUAL_SITES = ("resid_pre", "resid_mid", "resid_post")
MODULE_OUTPUT_SITES = ("z", "attn_out", "mlp_out")
# The residual modules of a block, in forward order.
MODULE_KINDS = ("attn", "mlp")
# Where a dictionary's output is added to the residual, for sites that are not residual
# points: a module output is added straight to the residual after it (`z` is not: its value
# vectors pass the output projection first, see `dictionary_points`).
WRITES_INTO = {"mlp_out": "resid_post", "attn_out": "resid_mid"}


@functools.total_ordering
@dataclass(frozen=True)
class Point:
    """A tensor of the forward pass: `site` of block `layer`, through input norm `norm` if set.

    Ordered along the forward pass (by layer, then site, then norm). Use `residual_point` to
    build one from a dictionary's site: it gives each residual point a single name.
    """

    site: str
    layer: int
    norm: str | None = None

    def __post_init__(self):
        if self.site not in SITES:
            raise LensRequestError(f"unknown site {self.site!r}; expected one of {SITES}")
        if self.norm is not None and self.norm not in INPUT_NORMS_WITH_JACOBIAN:
            raise LensRequestError(f"unknown input norm {self.norm!r}; expected one of {INPUT_NORMS_WITH_JACOBIAN}")

    def _key(self) -> tuple:
        return (self.layer, SITES.index(self.site), "" if self.norm is None else self.norm)

    def __lt__(self, other: Point) -> bool:
        if not isinstance(other, Point):
            return NotImplemented
        return self._key() < other._key()

    @property
    def residual(self) -> Point:
        """The residual point this point is computed from: itself without its norm; `resid_mid`
        for an MLP input; for a module output, the residual point it is added into
        (`resid_mid[b]` for `z` and `attn_out`, `resid_post[b]` for `mlp_out`: use
        `flows_into` for the residual point's single name)."""
        if self.site in MODULE_OUTPUT_SITES:
            return Point("resid_post" if self.site == "mlp_out" else "resid_mid", self.layer)
        return Point("resid_mid" if self.site == "mlp_in" else self.site, self.layer)

    @property
    def module(self) -> Module | None:
        """The module whose output this point is (None for residual points and MLP inputs)."""
        if self.site not in MODULE_OUTPUT_SITES:
            return None
        return Module("mlp" if self.site == "mlp_out" else "attn", self.layer)

    def __str__(self) -> str:
        name = f"{self.site}[{self.layer}]"
        return name if self.norm is None else f"{self.norm}({name})"


@dataclass(frozen=True)
class Module:
    """A residual module: `kind` ("attn" or "mlp") of block `layer`."""

    kind: str
    layer: int

    def __post_init__(self):
        if self.kind not in MODULE_KINDS:
            raise LensRequestError(f"unknown module kind {self.kind!r}; expected one of {MODULE_KINDS}")

    @property
    def reads(self) -> Point:
        """The residual point the module reads (its input before its own pre-norm)."""
        return Point("resid_pre" if self.kind == "attn" else "resid_mid", self.layer)

    @property
    def writes(self) -> Point:
        """The residual point its output is added into (`resid_post[b]` for an MLP)."""
        return Point("resid_mid" if self.kind == "attn" else "resid_post", self.layer)


def module_writes(module: Module, parallel: bool = False) -> Point:
    """The residual point `module`'s output is added into: `Module.writes`, but `resid_post[b]`
    for the attention of a parallel block."""
    return Point("resid_post", module.layer) if parallel else module.writes


def final_point(n_layers: int) -> Point:
    """The final residual, before the final norm."""
    return Point("resid_post", n_layers - 1)


def residual_point(site: str, layer: int, n_layers: int) -> Point:
    """The point of site `site` at block `layer`, residual points under one name:
    `resid_post[b]` is `resid_pre[b + 1]` except for the final residual."""
    if not 0 <= layer < n_layers:
        raise LensRequestError(f"layer {layer} is not a block of this model (0 .. {n_layers - 1})")
    if site == "resid_post" and layer < n_layers - 1:
        return Point("resid_pre", layer + 1)
    return Point(site, layer)


def flows_into(point: Point, n_layers: int) -> Point:
    """The residual point (single name, `residual_point`) that `point` is computed from or
    added into: how far a sweep must reach to record `point`."""
    residual = point.residual
    return residual_point(residual.site, residual.layer, n_layers)


def value_sites(sites: tuple[Point, ...]) -> tuple[Point, ...]:
    """The module outputs among `sites` that the value sweep records: the `z` points (value
    vectors at `attn_out` / `mlp_out` are added straight to the residual and read its rows)."""
    return tuple(p for p in sites if p.site == "z")


def site_columns(sites: tuple[Point, ...], config) -> dict[Point, slice]:
    """Where each of `sites` lies along the last axis of the arrays that hold them side by side."""
    columns, start = {}, 0
    for point in sites:
        width = site_width(point, config)
        columns[point] = slice(start, start + width)
        start += width
    return columns


def site_width(point: Point, config) -> int:
    """Width of the vectors at `point`: `n_heads x head_dim` for `z`, else `d_model`."""
    return config.n_heads * config.head_dim if point.site == "z" else config.d_model


def modules(n_layers: int) -> tuple[Module, ...]:
    """Every residual module in forward order: the order of the first-order operators."""
    return tuple(Module(kind, b) for b in range(n_layers) for kind in MODULE_KINDS)


def value_points(n_layers: int) -> tuple[Point, ...]:
    """The points the value sweep records, in row order: each module's input, then the final
    residual (`resid_pre[0], resid_mid[0], resid_pre[1], ..., final`)."""
    return tuple(m.reads for m in modules(n_layers)) + (final_point(n_layers),)


def key_points(n_layers: int, with_input_norms: bool = False) -> tuple[Point, ...]:
    """The points the key sweep records, in row order: `value_points`, each MLP's normalized
    input, and with `with_input_norms` every residual point through each input norm of
    `INPUT_NORMS_WITH_JACOBIAN` in that order."""
    residual = value_points(n_layers)
    mlp_inputs = tuple(Point("mlp_in", b) for b in range(n_layers))
    norms = INPUT_NORMS_WITH_JACOBIAN if with_input_norms else ()
    normed = tuple(Point(p.site, p.layer, norm) for norm in norms for p in residual)
    return residual + mlp_inputs + normed


@functools.lru_cache(maxsize=64)
def _rows(n_layers: int) -> dict[Point, int]:
    return {p: i for i, p in enumerate(key_points(n_layers, with_input_norms=True))}


def row(point: Point, n_layers: int) -> int:
    """Index of `point` in the operator arrays (`TransportOperators.value` / `.key`) and in the
    per-feature perturbation stacks: its position in `key_points(n_layers, True)`."""
    rows = _rows(n_layers)
    if point not in rows:
        raise LensRequestError(
            f"{point} is not a point the sweeps record for {n_layers} layers (see points.key_points)"
        )
    return rows[point]


def point_at(index: int, n_layers: int) -> Point:
    """The point stored at row `index` (the inverse of `row`)."""
    points = key_points(n_layers, with_input_norms=True)
    if not 0 <= index < len(points):
        raise LensRequestError(f"row {index} is outside the {len(points)} rows of {n_layers} layers")
    return points[index]


def module_row(module: Module, n_layers: int) -> int:
    """Index of `module` in the first-order operators: its position in `modules`."""
    return modules(n_layers).index(module)


def n_points(n_layers: int) -> int:
    """Rows of the value operators."""
    return len(value_points(n_layers))


def n_key_points(n_layers: int) -> int:
    """Rows of the key operators without input-norm points."""
    return len(key_points(n_layers))


def block_start(block: int, n_layers: int) -> Point:
    """The residual point before block `block` (the final residual for `block == n_layers`)."""
    return final_point(n_layers) if block == n_layers else Point("resid_pre", block)


def value_first_block(point: Point, n_layers: int) -> int:
    """The lowest block a value sweep from the top must pass to reach `point`'s residual
    (`n_layers`: none, for the final residual)."""
    after = [m.layer for m in modules(n_layers) if m.reads >= point.residual]
    return min(after, default=n_layers)


def key_block_stop(point: Point, n_layers: int) -> int:
    """How many blocks, from the embedding up, a key sweep must pass to reach `point`'s residual."""
    before = [m.layer for m in modules(n_layers) if m.writes <= point.residual]
    return max(before, default=-1) + 1


@dataclass(frozen=True)
class DictionaryPoints:
    """Where one dictionary's features are transported from.

    `write`: the point its value vectors are added to (a residual point; `z` for dictionaries
    on the heads' outputs). `read`: the point whose cotangent its key vectors are (reference
    convention: a transcoder reads `resid_mid`, the MLP input before its norm; with
    `exact_norm_jacobian`, the normalized `mlp_in`; a module-output dictionary reads the
    module output). `read_residual`: the residual point the first-order key terms start from
    (for a module output, the module's input: the one hop through the module comes first,
    docs/definitions.md section 1b).
    """

    write: Point
    read: Point
    read_residual: Point
    parallel: bool = False  # the model's blocks are parallel (`module_writes`)

    def value_modules(self, n_layers: int) -> tuple[Module, ...]:
        """Modules after the write point (for `z` of a parallel block: after its `resid_post`)."""
        start = self.write
        if self.parallel and start.site == "z":
            start = Point("resid_post", start.layer)
        return tuple(m for m in modules(n_layers) if m.reads >= start)

    def key_modules(self, n_layers: int) -> tuple[Module, ...]:
        """Modules before the read point (towards the embedding)."""
        return tuple(m for m in modules(n_layers) if module_writes(m, self.parallel) <= self.read_residual)


def dictionary_points(
    site_in: str,
    site_out: str,
    layer: int,
    n_layers: int,
    exact_norm_jacobian: bool = False,
    input_norm: str = "none",
    parallel: bool = False,
) -> DictionaryPoints:
    """Write and read points of a dictionary. With `exact_norm_jacobian`, keys are read after the
    norm the dictionary's input really passes: the MLP's pre-norm for transcoders reading
    `mlp_in`, the dictionary's own per-token input normalization for SAEs that have one.
    `parallel`: the model's blocks are parallel; `attn_out` then writes `resid_post`, and no
    dictionary may write `resid_mid` (ValueError; `qlens_jax.dictionaries` refuses it first)."""
    if parallel and site_out == "resid_mid":
        raise ValueError(f"a parallel block has no resid_mid to write (layer {layer}); see points.module_writes")
    into = "resid_post" if parallel and site_out == "attn_out" else WRITES_INTO.get(site_out, site_out)
    write = residual_point(into, layer, n_layers)
    if site_in in MODULE_OUTPUT_SITES:
        read = residual_point(site_in, layer, n_layers)
        assert read.module is not None  # a module output's point names its module
        return DictionaryPoints(write=write, read=read, read_residual=read.module.reads, parallel=parallel)
    read_residual = residual_point("resid_mid" if site_in == "mlp_in" else site_in, layer, n_layers)
    read = read_residual
    if exact_norm_jacobian and site_in == "mlp_in":
        read = residual_point("mlp_in", layer, n_layers)
    elif exact_norm_jacobian and input_norm in INPUT_NORMS_WITH_JACOBIAN:
        read = Point(read_residual.site, read_residual.layer, input_norm)
    return DictionaryPoints(write=write, read=read, read_residual=read_residual, parallel=parallel)
