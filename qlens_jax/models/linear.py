"""`Linear`: the one affine map every module of the transformer uses."""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, Float


class Linear(eqx.Module):
    """`x @ weight + bias` with `weight` stored `[d_in, d_out]` (`*layers` when stacked)."""

    weight: Float[Array, "*layers d_in d_out"]
    bias: Float[Array, "*layers d_out"] | None

    def __call__(self, x: Float[Array, "*batch d_in"]) -> Float[Array, "*batch d_out"]:
        y = x @ self.weight
        return y if self.bias is None else y + self.bias
