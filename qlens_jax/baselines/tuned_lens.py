"""Tuned-lens translators: one affine map per residual point, and the KL they are trained on.

Translator `j` acts on the residual stream at residual point `points[j]` (numbered as in
`qlens_jax.lens.points`: `2b` = resid_pre[b], `2b+1` = resid_mid[b], `2L` = final):

    T_j(h) = h + h @ weight[j].T + bias[j]        (A_j = I + weight[j], b_j = bias[j])

This is the tuned-lens library's parametrization (its translators are `torch.nn.Linear`
layers added residually, zero-initialized, so the lens starts as the logit lens; `weight` is
stored in `nn.Linear`'s `[out, in]` orientation). The library has one translator per Hugging
Face hidden state `0 .. L-1`, i.e. at resid_pre[0 .. L-1] (`library_points`); the final
residual needs none (`translate` is the identity there). Points between blocks' modules
(resid_mid) can be trained too (`all_points`), for SAEs that write there.

The lens reads a residual `h` at point `p` as `log_softmax(unembed(T_p(h)))` and is trained
to match the model's own final next-token distribution: `KL(p_final || p_lens)`, averaged
over valid positions (Belrose et al. 2023; the Query Lens paper's appendix C).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from qlens_jax.baselines.splice import point_value
from qlens_jax.lens.points import Point, final_point, point_at, row, value_points
from qlens_jax.models import Transformer

TUNED_LENS_HINT = (
    "Train translators there with train_tuned_lens(..., points=...) (all_points(n_layers) covers "
    "every point below the final residual)."
)


def library_points(n_layers: int) -> tuple[int, ...]:
    """The tuned-lens library's translators: Hugging Face hidden states 0..L-1 = resid_pre[0..L-1]
    (as operator rows, `points.row`, the numbering translator files store)."""
    return tuple(row(Point("resid_pre", block), n_layers) for block in range(n_layers))


def all_points(n_layers: int) -> tuple[int, ...]:
    """Every residual point below the final one (resid_pre and resid_mid of every block), as rows."""
    return tuple(row(p, n_layers) for p in value_points(n_layers) if p != final_point(n_layers))


def final_row(n_layers: int) -> int:
    """The row of the final residual, where no translator is needed (the identity)."""
    return row(final_point(n_layers), n_layers)


def point_name(point: int, n_layers: int) -> str:
    """`resid_pre[b]`, `resid_mid[b]` or `final` for the residual point of row `point`."""
    return "final" if point == final_row(n_layers) else str(point_at(point, n_layers))


class TunedLens(eqx.Module):
    """Affine translators for the residual points in `points` (see the module docstring)."""

    weight: Float[Array, "n d d"]
    bias: Float[Array, "n d"]
    points: tuple[int, ...] = eqx.field(static=True)
    n_layers: int = eqx.field(static=True)

    def __check_init__(self):
        n, d = len(self.points), self.bias.shape[-1]
        if self.weight.shape != (n, d, d) or self.bias.shape != (n, d):
            raise ValueError(
                f"TunedLens: weight {self.weight.shape} / bias {self.bias.shape} do not fit {n} points of width {d}"
            )
        final = final_row(self.n_layers)
        if sorted(set(self.points)) != list(self.points) or any(not 0 <= p < final for p in self.points):
            raise ValueError(
                f"TunedLens: points {self.points} must be increasing residual points below the final one (row {final})"
            )

    @classmethod
    def identity(cls, n_layers: int, d_model: int, points: tuple[int, ...] | None = None) -> "TunedLens":
        """Zero translators (the logit lens), the training start."""
        points = library_points(n_layers) if points is None else tuple(points)
        return cls(
            jnp.zeros((len(points), d_model, d_model), jnp.float32),
            jnp.zeros((len(points), d_model), jnp.float32),
            points,
            n_layers,
        )

    @property
    def d_model(self) -> int:
        return self.bias.shape[-1]

    def has(self, point: int) -> bool:
        """Whether the lens can translate the residual at `point` (the final point always)."""
        return point == 2 * self.n_layers or point in self.points

    def index(self, point: int) -> int:
        if point not in self.points:
            raise KeyError(
                f"the tuned lens has no translator at residual point {point} ({point_name(point, self.n_layers)}); "
                f"it has {[point_name(p, self.n_layers) for p in self.points]}. {TUNED_LENS_HINT}"
            )
        return self.points.index(point)

    def translate(self, h: Float[Array, "*batch d"], point: int, bias: bool = True) -> Float[Array, "*batch d"]:
        """`T_point(h)` (without `b` when `bias=False`: the linear part `A h`); the identity at
        the final residual."""
        if point == 2 * self.n_layers:
            return h
        j = self.index(point)
        return _affine(self.weight[j], self.bias[j] if bias else jnp.zeros_like(self.bias[j]), h)


def _affine(
    weight: Float[Array, "d d"], bias: Float[Array, " d"], h: Float[Array, "*batch d"]
) -> Float[Array, "*batch d"]:
    h = h.astype(jnp.float32)
    return h + h @ weight.T + bias


def _kl_from_target(model: Transformer, target_logp, h, mask, weight, bias) -> Float[Array, ""]:
    logp = jax.nn.log_softmax(model.unembed(_affine(weight, bias, h)).astype(jnp.float32), axis=-1)
    per_token = jnp.sum(jnp.exp(target_logp) * (target_logp - logp), axis=-1)
    return jnp.sum(per_token * mask) / jnp.maximum(mask.sum(), 1)


def lens_kl(
    model: Transformer, lens: TunedLens, tokens: Int[Array, "b s"], mask: Bool[Array, "b s"]
) -> Float[Array, " n"]:
    """Per translator, `KL(p_final || p_lens)` averaged over the batch's valid positions.

    Points are mapped over one at a time (rematerialized under differentiation), so only one
    point's logits are alive at once.
    """
    logits, residuals = model.run_with_residuals(tokens, mask)
    target = jax.lax.stop_gradient(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1))
    hidden = jax.lax.stop_gradient(jnp.stack([point_value(residuals, point_at(p, lens.n_layers)) for p in lens.points]))
    mask = mask.astype(jnp.float32)
    one = jax.checkpoint(lambda args: _kl_from_target(model, target, args[0], mask, args[1], args[2]))
    return jax.lax.map(one, (hidden, lens.weight, lens.bias))
