"""Indices of residual-stream points and residual modules.

For `L` blocks the stream has `2L + 1` points and `2L` modules, interleaved:

    point 2b   = resid_pre[b]   --module 2b   (attention b)-->  point 2b+1 = resid_mid[b]
    point 2b+1 = resid_mid[b]   --module 2b+1 (MLP b)-------->  point 2b+2 = resid_post[b]

so module `m` reads point `m` and writes point `m + 1`; point `2L` is the final residual.
The key sweep also records the MLPs' normalized inputs (`mlp_in[b]`, where transcoders read)
as extra points `2L + 1 + b`, and, when asked, every residual point after a dictionary's own
per-token input normalization (`layer_norm`, `constant_norm_rescale`) as points
`3L + 1 + i * (2L + 1) + p` for the `i`-th normalization of `INPUT_NORMS_WITH_JACOBIAN`.
"""

from __future__ import annotations

from dataclasses import dataclass

INPUT_NORMS_WITH_JACOBIAN = ("layer_norm", "constant_norm_rescale")


def n_points(n_layers: int) -> int:
    """Residual points `resid_pre[0..L-1]`, `resid_mid[0..L-1]`, final."""
    return 2 * n_layers + 1


def n_key_points(n_layers: int) -> int:
    """Residual points plus the `L` normalized MLP inputs."""
    return 3 * n_layers + 1


def residual_point(site: str, layer: int, n_layers: int) -> int:
    if site == "resid_pre":
        return 2 * layer
    if site == "resid_mid":
        return 2 * layer + 1
    if site in ("resid_post", "mlp_out"):
        return 2 * layer + 2
    if site == "mlp_in":
        return 2 * n_layers + 1 + layer
    raise ValueError(f"unknown site {site!r}")


@dataclass(frozen=True)
class DictionaryPoints:
    """Where one dictionary's features are transported from.

    `write`: the residual point its value vectors are added to. `read`: the point whose
    cotangent its key vectors are (reference convention: a transcoder reads `resid_mid`,
    the MLP input before its norm; with `exact_norm_jacobian`, the normalized `mlp_in`).
    `read_residual`: the residual point of `read` (for first-order module ranges).
    """

    write: int
    read: int
    read_residual: int

    def value_modules(self, n_layers: int) -> range:
        """Modules after the write point."""
        return range(self.write, 2 * n_layers)

    def key_modules(self) -> range:
        """Modules before the read point (towards the embedding)."""
        return range(0, self.read_residual)


def key_residual_point(point: int, n_layers: int) -> int:
    """The residual point a key point reads from: itself, the `resid_mid` of an MLP input, or
    the residual point under an input normalization."""
    residual = n_points(n_layers)
    if point < residual:
        return point
    if point < n_key_points(n_layers):
        return 2 * (point - residual) + 1
    return (point - n_key_points(n_layers)) % residual


def normalized_point(norm: str, point: int, n_layers: int) -> int:
    """Index of residual point `point` seen through input normalization `norm`."""
    return n_key_points(n_layers) + INPUT_NORMS_WITH_JACOBIAN.index(norm) * n_points(n_layers) + point


def dictionary_points(
    site_in: str, site_out: str, layer: int, n_layers: int, exact_norm_jacobian: bool = False, input_norm: str = "none"
) -> DictionaryPoints:
    """Write and read points of a dictionary. With `exact_norm_jacobian`, keys are read after the
    norm the dictionary's input really passes: the MLP's pre-norm for transcoders reading
    `mlp_in`, the dictionary's own per-token input normalization for SAEs that have one."""
    write = residual_point(site_out, layer, n_layers)
    read_residual = residual_point("resid_mid" if site_in == "mlp_in" else site_in, layer, n_layers)
    read = read_residual
    if exact_norm_jacobian and site_in == "mlp_in":
        read = residual_point("mlp_in", layer, n_layers)
    elif exact_norm_jacobian and input_norm in INPUT_NORMS_WITH_JACOBIAN:
        read = normalized_point(input_norm, read_residual, n_layers)
    return DictionaryPoints(write=write, read=read, read_residual=read_residual)
