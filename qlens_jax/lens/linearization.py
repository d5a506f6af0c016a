"""Which Jacobians the transports take: the authors' `submodule` and layer-norm toggles.

The transports differentiate the model's forward pass at its clean hidden states
(`qlens_jax.lens.transport`). Two options of the authors' code change what is differentiated
without changing any hidden state (docs/definitions.md section 1d):

- `submodule`: "attn" transports through the attention modules only, "mlp" through the MLPs
  only ("both": every module). The other module's output is held at its clean value
  (`jax.lax.stop_gradient`), so its Jacobian is zero, and JAX drops its tangent computations
  from the linearized program: the sweeps pay no pass for it.
- the norm Jacobians (`jvp_norm` on the value side, `vjp_norm` on the key side): without them,
  each module is differentiated with respect to its normalized input as if the pre-norm (and a
  post-norm, where the model has one) were the identity: the Jacobian of `attn` or `mlp` at
  `ln(h)` applied to the tangent itself, as the authors' `jvp_attn` / `vjp_mlp` with
  `use_layer_norm=False` do on their cache of normalized inputs.

`transport_model(model, submodule, norm_jacobian)` returns the model with its blocks' modules
wrapped accordingly (the same weights; every forward value unchanged).
"""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax

from qlens_jax.models import Transformer

SUBMODULES = ("both", "attn", "mlp")


class HeldConstant(eqx.Module):
    """A module whose output has no derivative: the clean value, held."""

    inner: Any

    def __call__(self, x):
        return jax.lax.stop_gradient(self.inner(x))


class IdentityJacobian(eqx.Module):
    """A norm whose output is the norm's, with the identity as its Jacobian."""

    inner: Any

    def __call__(self, x):
        y = self.inner(x)
        return jax.lax.stop_gradient(y) + (x - jax.lax.stop_gradient(x)).astype(y.dtype)


def is_default(submodule: str, norm_jacobian: bool) -> bool:
    """Whether these options differentiate the model as it is."""
    return submodule == "both" and norm_jacobian


def transport_model(model: Transformer, submodule: str = "both", norm_jacobian: bool = True) -> Transformer:
    """`model` as the transports must differentiate it under `submodule` and the norm toggle
    (module docstring); `model` itself for the defaults."""
    if is_default(submodule, norm_jacobian):
        return model
    blocks = model.blocks
    if not norm_jacobian:
        for name in ("attn_norm", "mlp_norm", "attn_post_norm", "mlp_post_norm"):
            if getattr(blocks, name) is not None:
                blocks = eqx.tree_at(lambda b, n=name: getattr(b, n), blocks, IdentityJacobian(getattr(blocks, name)))
    if submodule == "mlp":
        # the attention reads only its pre-norm's output: held, the whole module is constant
        blocks = eqx.tree_at(lambda b: b.attn_norm, blocks, HeldConstant(blocks.attn_norm))
    elif submodule == "attn":
        blocks = eqx.tree_at(lambda b: b.mlp, blocks, HeldConstant(blocks.mlp))
    return eqx.tree_at(lambda m: m.blocks, model, blocks)


class NoNorm(eqx.Module):
    """The identity in the place of a final norm (no bias: `remove_final_norm_bias` has nothing to drop)."""

    bias: None = None

    def __call__(self, x):
        return x


def readout_model(model: Transformer, unembed_norm: bool = True) -> Transformer:
    """`model` as the value readout uses it: without its final norm when `unembed_norm` is off
    (the authors' `use_unembed_layer_norm=False`: the vector is unembedded as it is)."""
    return model if unembed_norm else eqx.tree_at(lambda m: m.final_norm, model, NoNorm())
