"""Typed points: the row layout equals the integer layout operators were saved with, rows and
points round-trip, and points order along the forward pass."""

import pytest

from qlens_jax.lens import LensRequestError, points as pts
from qlens_jax.lens.points import Module, Point

INPUT_NORMS = ("layer_norm", "constant_norm_rescale")


def old_row(site: str, layer: int, n_layers: int, norm: str | None = None) -> int:
    """The integer numbering of residual points before the typed points (the saved layout):
    2b resid_pre[b], 2b+1 resid_mid[b], 2b+2 resid_post[b], 2L+1+b mlp_in[b], and
    3L+1+i(2L+1)+p residual point p through the i-th input norm."""
    residual = {"resid_pre": 2 * layer, "resid_mid": 2 * layer + 1, "resid_post": 2 * layer + 2}
    if site == "mlp_in":
        return 2 * n_layers + 1 + layer
    if norm is None:
        return residual[site]
    return 3 * n_layers + 1 + INPUT_NORMS.index(norm) * (2 * n_layers + 1) + residual[site]


@pytest.mark.parametrize("n_layers", [1, 2, 3, 12, 26])
def test_rows_equal_the_saved_integer_layout(n_layers):
    key = pts.key_points(n_layers, with_input_norms=True)
    assert len(key) == 3 * n_layers + 1 + len(INPUT_NORMS) * (2 * n_layers + 1)
    assert pts.n_points(n_layers) == 2 * n_layers + 1 and pts.n_key_points(n_layers) == 3 * n_layers + 1
    for index, point in enumerate(key):
        assert pts.row(point, n_layers) == index == old_row(point.site, point.layer, n_layers, point.norm)
        assert pts.point_at(index, n_layers) == point
    assert pts.key_points(n_layers)[: pts.n_points(n_layers)] == pts.value_points(n_layers)
    for b in range(n_layers):
        for site in ("resid_pre", "resid_mid", "resid_post", "mlp_in"):
            assert pts.row(pts.residual_point(site, b, n_layers), n_layers) == old_row(site, b, n_layers)
        transcoder = pts.dictionary_points("mlp_in", "mlp_out", b, n_layers)
        assert pts.row(transcoder.write, n_layers) == old_row("resid_post", b, n_layers)


@pytest.mark.parametrize("n_layers", [1, 4])
def test_modules_read_and_write_the_old_numbering(n_layers):
    """Module m (2b attention b, 2b+1 MLP b) read point m and wrote point m + 1."""
    for m, module in enumerate(pts.modules(n_layers)):
        assert pts.module_row(module, n_layers) == m
        assert (module.kind, module.layer) == (("attn", "mlp")[m % 2], m // 2)
        assert pts.row(module.reads, n_layers) == m
        assert old_row(module.writes.site, module.writes.layer, n_layers) == m + 1


@pytest.mark.parametrize("n_layers", [1, 3, 6])
def test_points_are_ordered_along_the_stream(n_layers):
    residual = pts.value_points(n_layers)
    assert list(residual) == sorted(residual, reverse=True)[::-1]
    assert sorted(pts.key_points(n_layers, True)) != list(pts.key_points(n_layers, True))  # rows are not stream order
    for b in range(n_layers):
        assert Point("resid_pre", b) < Point("resid_mid", b) < Point("mlp_in", b) < Point("resid_post", b)
        assert Point("resid_mid", b) < Point("resid_mid", b, "layer_norm")


@pytest.mark.parametrize("n_layers", [1, 2, 5])
def test_dictionary_module_ranges_and_block_bounds_match_the_old_arithmetic(n_layers):
    for p in range(2 * n_layers + 1):
        point = pts.point_at(p, n_layers)
        dp = pts.DictionaryPoints(write=point, read=point, read_residual=point)
        assert [pts.module_row(m, n_layers) for m in dp.value_modules(n_layers)] == list(range(p, 2 * n_layers))
        assert [pts.module_row(m, n_layers) for m in dp.key_modules(n_layers)] == list(range(0, p))
        assert pts.value_first_block(point, n_layers) == p // 2
        assert pts.key_block_stop(point, n_layers) == -(-p // 2)
    for b in range(n_layers + 1):
        assert pts.row(pts.block_start(b, n_layers), n_layers) == 2 * b


def test_read_points_and_their_residuals():
    n_layers = 4
    transcoder = pts.dictionary_points("mlp_in", "mlp_out", 2, n_layers, exact_norm_jacobian=True)
    assert transcoder.read == Point("mlp_in", 2) and transcoder.read.residual == Point("resid_mid", 2)
    assert transcoder.write == Point("resid_pre", 3)
    sae = pts.dictionary_points("resid_post", "resid_post", 3, n_layers, True, "layer_norm")
    assert sae.read == Point("resid_post", 3, "layer_norm") and sae.read_residual == Point("resid_post", 3)
    assert pts.row(sae.read, n_layers) == old_row("resid_post", 3, n_layers, "layer_norm")
    plain = pts.dictionary_points("resid_pre", "resid_pre", 1, n_layers, True, "none")
    assert plain.read == plain.read_residual == Point("resid_pre", 1)


def test_bad_points_are_refused():
    with pytest.raises(LensRequestError, match="unknown site 'hook_z'"):
        Point("hook_z", 0)
    with pytest.raises(LensRequestError, match="unknown input norm"):
        Point("resid_pre", 0, "rms")
    with pytest.raises(LensRequestError, match="unknown module kind"):
        Module("moe", 0)
    with pytest.raises(LensRequestError, match="layer 4 is not a block"):
        pts.residual_point("resid_pre", 4, 4)
    with pytest.raises(LensRequestError, match="not a point the sweeps record"):
        pts.row(Point("resid_post", 0), 4)  # named resid_pre[1]
    with pytest.raises(LensRequestError, match="row 99"):
        pts.point_at(99, 2)
