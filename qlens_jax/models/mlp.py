"""MLP modules and the interface the lens sweeps linearize them through.

The block-major sweeps (`qlens_jax.lens.blockwise`) apply an MLP as its `d_model x d_model`
Jacobian at each position. Every MLP module is a `ResidualMLP`: a function of the normalized
input at one position (`__call__`), its Jacobian there (`jacobian`: by default forward-mode
autodiff of `__call__`, one JVP per input direction; a module overrides it where an explicit
product is cheaper) and the cost of both per position (`cost`), from which the sweeps decide
whether forming Jacobians pays (`blockwise.worth_it`) and how much memory forming takes. A
mixture-of-experts MLP (`RoutedMLP`) writes `__call__`, `cost` and, because gathering the
chosen experts is cheaper than autodiff through all of them, `jacobian`; the sweeps do not
change.

Row convention throughout: a tangent row `t` maps to `t @ M`.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from qlens_jax.models import experts, layers
from qlens_jax.models.config import ModelConfig
from qlens_jax.models.linear import Linear


class MLPCost(NamedTuple):
    """Per-position costs of an MLP module, in multiply-adds and floats."""

    form: int  # forming its d x d Jacobian at one position
    per_vector: int  # pushing one tangent through its linearization at one position
    forming_floats: int  # floats alive while forming one position's Jacobian


def autodiff_jacobian(fn, x: Float[Array, " d"]) -> tuple[Float[Array, " d_out"], Float[Array, "d d_out"]]:
    """`fn(x)` and its Jacobian at `x` in row convention (row `i` is the JVP of the `i`-th
    basis vector): the default of every `ResidualMLP`."""
    out, push = jax.linearize(fn, x)
    return out, jax.vmap(push)(jnp.eye(x.shape[-1], dtype=x.dtype))


def autodiff_cost(d_model: int, per_vector: int, floats: int) -> MLPCost:
    """The cost of `autodiff_jacobian` for a module costing `per_vector` per tangent and
    holding `floats` while linearized: one JVP per input direction."""
    return MLPCost(form=d_model * per_vector, per_vector=per_vector, forming_floats=floats + d_model**2)


class ResidualMLP(eqx.Module):
    """An MLP module at one position, as the sweeps linearize it. Subclasses define
    `__call__` (`[*batch, d_model] -> [*batch, d_model]`) and `cost`; `jacobian` defaults to
    forward-mode autodiff."""

    @abc.abstractmethod
    def __call__(self, x: Float[Array, "*batch d"]) -> Float[Array, "*batch d"]:
        """The module's output at every position of `x`."""

    def jacobian(self, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
        """The module's output at `x` and its Jacobian there, row convention."""
        return autodiff_jacobian(self, x)

    @staticmethod
    @abc.abstractmethod
    def cost(config: ModelConfig) -> MLPCost:
        """What forming and applying the module's Jacobian costs for `config`."""


class MLP(ResidualMLP):
    """`down(act(up x))`, or the gated `down(act(gate x) * up x)` when `gate_proj` is set."""

    up_proj: Linear
    down_proj: Linear
    gate_proj: Linear | None
    activation: str = eqx.field(static=True)

    def __call__(self, x: Float[Array, "*batch d_model"]) -> Float[Array, "*batch d_model"]:
        gate = None if self.gate_proj is None else self.gate_proj(x)
        return self.down_proj(layers.mlp_hidden(self.activation, self.up_proj(x), gate))

    def jacobian(self, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
        """Explicitly `[W_up diag(s)] W_down` (`s` the hidden layer's slope; gated MLPs fold
        their two branches into one `W_up`-sized factor): `d x d_mlp x d` multiply-adds,
        against `d` JVPs of `(2 or 3) d d_mlp` each by autodiff."""
        ones = lambda z: jnp.ones_like(z)
        up = self.up_proj(x)
        # The hidden layer is elementwise in (up, gate): its Jacobian is a diagonal per branch.
        if self.gate_proj is None:
            hidden, slope = jax.jvp(lambda u: layers.mlp_hidden(self.activation, u), (up,), (ones(up),))
            inner = self.up_proj.weight * slope
        else:
            gate = self.gate_proj(x)
            hidden, by_up = jax.jvp(lambda u: layers.mlp_hidden(self.activation, u, gate), (up,), (ones(up),))
            _, by_gate = jax.jvp(lambda g: layers.mlp_hidden(self.activation, up, g), (gate,), (ones(gate),))
            inner = self.gate_proj.weight * by_gate + self.up_proj.weight * by_up
        product = jnp.matmul(inner, self.down_proj.weight, preferred_element_type=jnp.float32).astype(x.dtype)
        return self.down_proj(hidden), product

    @staticmethod
    def cost(config: ModelConfig) -> MLPCost:
        d, ff = config.d_model, config.d_mlp
        return MLPCost(form=d * ff * d, per_vector=(3 if config.gated_mlp else 2) * d * ff, forming_floats=3 * d * ff)


class RoutedMLP(ResidualMLP):
    """Routed experts (Qwen3-MoE, gpt-oss): a router and `experts` gated MLPs
    (`down(act(gate x) * up x)`, or gpt-oss's clamped SwiGLU), weights stacked by expert
    (`[*layers, experts, d_in, d_out]`), optional biases on the router and the experts'
    projections (gpt-oss); the output is the routed sum.

    `__call__` runs every expert, weighted by a routing weight that is exactly 0 for the experts
    not chosen (`experts.routing_weights`): the model's function, whose autodiff holds the top-k
    choice and differentiates the router weights (docs/definitions.md section 1c); `experts / k` times the
    chosen experts' arithmetic. `jacobian` gathers the `k` chosen experts instead."""

    router: Float[Array, "*layers d_model experts"]
    gate_proj: Float[Array, "*layers experts d_model d_mlp"]
    up_proj: Float[Array, "*layers experts d_model d_mlp"]
    down_proj: Float[Array, "*layers experts d_mlp d_model"]
    activation: str = eqx.field(static=True)
    experts_per_token: int = eqx.field(static=True)
    router_kind: str = eqx.field(static=True)
    renormalize: bool = eqx.field(static=True)
    router_bias: Float[Array, "*layers experts"] | None = None
    gate_bias: Float[Array, "*layers experts d_mlp"] | None = None
    up_bias: Float[Array, "*layers experts d_mlp"] | None = None
    down_bias: Float[Array, "*layers experts d_model"] | None = None
    swiglu: tuple[float, float] | None = eqx.field(static=True, default=None)  # gpt-oss's (alpha, limit)
    # Qwen3.5-MoE: a shared gated MLP, scaled by `sigmoid(x @ shared_gate)`, added to the routed sum.
    shared: MLP | None = None
    shared_gate: Float[Array, "*layers d_model 1"] | None = None

    def shared_output(self, x: Float[Array, "*batch d_model"]) -> Float[Array, "*batch d_model"]:
        """The gated shared expert's output (0 without one)."""
        if self.shared is None or self.shared_gate is None:
            return jnp.zeros_like(x)
        return jax.nn.sigmoid(x @ self.shared_gate) * self.shared(x)

    def shared_jacobian(self, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
        """The gated shared expert's output and Jacobian at one position: `sigma J_s + sigma'
        w_gate s(x)^T`, from the shared MLP's explicit Jacobian `J_s`."""
        if self.shared is None or self.shared_gate is None:
            return jnp.zeros_like(x), jnp.zeros((x.shape[-1], x.shape[-1]), x.dtype)
        out, product = self.shared.jacobian(x)
        sigma = jax.nn.sigmoid(x @ self.shared_gate[:, 0])
        return sigma * out, sigma * product + (sigma * (1 - sigma)) * jnp.outer(self.shared_gate[:, 0], out)

    def weights(self, x: Float[Array, "*batch d_model"]) -> Float[Array, "*batch experts"]:
        """The routing weights at `x` (0 for the experts not chosen)."""
        logits = x @ self.router
        if self.router_bias is not None:
            logits = logits + self.router_bias
        return experts.routing_weights(logits, self.experts_per_token, self.router_kind, self.renormalize)

    def hidden(
        self, up: Float[Array, "*batch d_mlp"], gate: Float[Array, "*batch d_mlp"]
    ) -> Float[Array, "*batch d_mlp"]:
        """The experts' hidden layer from their up and gate projections."""
        if self.swiglu is None:
            return layers.mlp_hidden(self.activation, up, gate)
        return layers.clamped_swiglu(up, gate, *self.swiglu)

    def __call__(self, x: Float[Array, "*batch d_model"]) -> Float[Array, "*batch d_model"]:
        weights = self.weights(x)
        gate = _add(jnp.einsum("...d,edf->...ef", x, self.gate_proj), self.gate_bias)
        up = _add(jnp.einsum("...d,edf->...ef", x, self.up_proj), self.up_bias)
        out = jnp.einsum("...ef,efd->...d", self.hidden(up, gate) * weights[..., None], self.down_proj)
        out = out if self.down_bias is None else out + weights @ self.down_bias
        return out + self.shared_output(x)

    def jacobian(self, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
        """Output and Jacobian at one position from the chosen experts only:
        `sum_j w_j A_j W_down_j + G Y`, with `A_j = W_gate_j diag(dh/dg_j) + W_up_j diag(dh/du_j)`
        expert `j`'s hidden-layer Jacobian, `G [d, k]` the chosen weights' gradients and
        `Y [k, d]` the chosen experts' outputs (down bias included)."""
        chosen = jax.lax.top_k(jax.lax.stop_gradient(self.weights(x)), self.experts_per_token)[1]
        chosen_weights = lambda h: self.weights(h)[chosen]
        weights = chosen_weights(x)
        pick = lambda b: None if b is None else b[chosen]
        gate_w, up_w, down_w = self.gate_proj[chosen], self.up_proj[chosen], self.down_proj[chosen]
        gate = _add(jnp.einsum("d,kdf->kf", x, gate_w), pick(self.gate_bias))
        up = _add(jnp.einsum("d,kdf->kf", x, up_w), pick(self.up_bias))
        hidden, by_up, by_gate = layers.gated_slopes(self.hidden, up, gate)
        inner = gate_w * by_gate[:, None, :] + up_w * by_up[:, None, :]
        through_experts = jnp.einsum("kaf,kfb->ab", inner, down_w * weights[:, None, None])
        outputs = _add(jnp.einsum("kf,kfd->kd", hidden, down_w), pick(self.down_bias))
        through_router = jax.jacfwd(chosen_weights)(x).T @ outputs
        shared, through_shared = self.shared_jacobian(x)
        return weights @ outputs + shared, through_experts + through_router + through_shared

    @staticmethod
    def cost(config: ModelConfig) -> MLPCost:
        """Forming: the chosen experts as one gated MLP `k d_mlp` wide (`d k d_mlp d`) plus the
        router's gradient (`d x experts` JVPs); a tangent pushed through `__call__` meets every
        expert and the router (`3 d experts d_mlp + d experts`)."""
        d, ff, e, k, fs = (
            config.d_model,
            config.d_mlp,
            config.n_experts,
            config.experts_per_token,
            config.shared_expert_d_mlp,
        )
        return MLPCost(
            form=d * (k * ff + fs) * d + d * d * e,
            per_vector=3 * d * (e * ff + fs) + d * (e + 1),
            forming_floats=3 * d * (k * ff + fs) + d * e,
        )


def _add(x: Array, bias: Array | None) -> Array:
    return x if bias is None else x + bias


class MixedMLP(ResidualMLP):
    """Routed experts in some layers and a dense gated MLP in the others (Qwen3-MoE with
    `mlp_only_layers` or `decoder_sparse_step`), stacked over layers as every block is: each
    layer holds both, the weights of the kind it does not have all zero, and the output is
    `routed(x) + dense(x)`. The absent part is exactly zero with a zero derivative (zero
    experts give zero outputs, so the router's weights meet zeros; zero dense weights give
    zero), so this is each layer's function and its Jacobian."""

    routed: RoutedMLP
    dense: MLP

    def __call__(self, x: Float[Array, "*batch d_model"]) -> Float[Array, "*batch d_model"]:
        return self.routed(x) + self.dense(x)

    def jacobian(self, x: Float[Array, " d"]) -> tuple[Float[Array, " d"], Float[Array, "d d"]]:
        """Both parts' explicit Jacobians, added."""
        routed_out, routed_jacobian = self.routed.jacobian(x)
        dense_out, dense_jacobian = self.dense.jacobian(x)
        return routed_out + dense_out, routed_jacobian + dense_jacobian

    @staticmethod
    def cost(config: ModelConfig) -> MLPCost:
        """Both parts' costs: every layer runs both."""
        routed = RoutedMLP.cost(config)
        dense = MLP.cost(dataclasses.replace(config, d_mlp=config.d_mlp_dense))
        return MLPCost(*(a + b for a, b in zip(routed, dense)))


def mlp_class(config: ModelConfig) -> type[ResidualMLP]:
    """The MLP module of `config`'s blocks."""
    if config.dense_mlp_layers:
        return MixedMLP
    return RoutedMLP if config.n_experts else MLP


def mlp_cost(config: ModelConfig) -> MLPCost:
    """Per-position costs of `config`'s MLP (`ResidualMLP.cost`)."""
    return mlp_class(config).cost(config)
