"""A model's own MLP neurons as a dictionary: `--dictionary neurons` (every layer) or
`neurons:RANGES` (e.g. `neurons:3,5-7`).

Neuron `i` of the MLP of layer `l` is a feature read at the MLP's normalized input and written
to its output, like a transcoder's: its key is its input weight vector (column `i` of `W_in`,
the up projection of a gated MLP) and its value its output weight vector (row `i` of `W_out`),
both `d_model` wide, as the authors' `get_feature_input_vector` / `get_feature_vector` with
`sae=None` take them from TransformerLens's `W_in` / `W_out`. Its activation is the model's own:
`act(x W_in + b_in)`, or `act(x W_gate + b_gate) * (x W_in + b_in)` for a gated MLP
(`Dictionary.encode` with `activation="mlp"`); decoding all neurons gives back the MLP's output.
Routed experts have no single neuron per index and are refused.
"""

from __future__ import annotations

import jax.numpy as jnp

from qlens_jax.dictionaries import Dictionary, DictionaryError
from qlens_jax.models import Transformer
from qlens_jax.models.mlp import MLP

PREFIX = "neurons"


def is_neurons_source(source) -> bool:
    """Whether a `--dictionary` source names the model's MLP neurons."""
    return isinstance(source, str) and (source == PREFIX or source.startswith(PREFIX + ":"))


def neuron_dictionary(model: Transformer, layer: int) -> Dictionary:
    """The neurons of the MLP of `layer` as a `Dictionary` (module docstring)."""
    mlp = model.blocks.mlp
    if not isinstance(mlp, MLP):
        raise DictionaryError(
            f"neurons: the model's MLPs are {type(mlp).__name__} (routed experts), with no single input and "
            "output weight vector per neuron"
        )
    if not 0 <= layer < model.config.n_layers:
        raise DictionaryError(f"neurons: layer {layer} is out of range for a model of {model.config.n_layers} layers")
    up, down, gate = mlp.up_proj, mlp.down_proj, mlp.gate_proj
    d_mlp, d_model = up.weight.shape[-1], down.weight.shape[-1]
    zeros = lambda n: jnp.zeros(n, jnp.float32)
    return Dictionary(
        W_enc=up.weight[layer],
        b_enc=zeros(d_mlp) if up.bias is None else up.bias[layer],
        W_dec=down.weight[layer],
        b_dec=zeros(d_model) if down.bias is None else down.bias[layer],
        layer=layer,
        site_in="mlp_in",
        site_out="mlp_out",
        kind="transcoder",
        name=PREFIX,
        activation="mlp",
        W_gate=None if gate is None else gate.weight[layer],
        b_gate=None if gate is None or gate.bias is None else gate.bias[layer],
        mlp_activation=mlp.activation,
    )


def neuron_dictionaries(model: Transformer, layers: list[int] | None = None) -> list[Dictionary]:
    """`neuron_dictionary` of each of `layers` (None: every layer), in order."""
    chosen = range(model.config.n_layers) if layers is None else layers
    return [neuron_dictionary(model, layer) for layer in chosen]
