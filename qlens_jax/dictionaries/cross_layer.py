"""`CrossLayerTranscoder`: the features of one read layer of a cross-layer transcoder (CLT).

A circuit-tracer CLT feature of layer `l` reads (its encoder) at the MLP input of layer `l`
and writes a decoder vector `d_{l->j}` into the MLP output of every layer `j = l .. L-1`
(docs/definitions.md section 1c). As a `Dictionary` it is the transcoder of layer `l` whose
`W_dec` is `d_{l->l}` (so `encode`, `decode` and `reconstruct` are those of its own layer);
`W_dec_cross [d_sae, L - l, d_out]` holds every decoder vector, `[:, j - l]` being `d_{l->j}`,
and is what the lens kernel reads on the value side. Code that only knows one write layer
(the splicing baselines, steering, channels) refuses it with `refuse_cross_layer`.
"""

import dataclasses

from jaxtyping import Array, Float

from .dictionary import Dictionary
from .errors import DictionaryError


class CrossLayerTranscoder(Dictionary):
    """A `Dictionary` (the transcoder of layer `layer`, `W_dec = W_dec_cross[:, 0]`) whose
    features also write into the MLP output of every later layer (`W_dec_cross`)."""

    W_dec_cross: Float[Array, "d_sae n_write d_out"] | None = None

    def __check_init__(self):
        if self.W_dec_cross is None:
            raise DictionaryError(f"cross-layer transcoder {self.name!r} has no W_dec_cross")
        shape = tuple(self.W_dec_cross.shape)
        if len(shape) != 3 or shape[0] != self.d_sae or shape[2] != self.d_out:
            raise DictionaryError(
                f"cross-layer transcoder {self.name!r}: W_dec_cross has shape {shape}, expected "
                f"[d_sae, n_layers - layer, d_out] = ({self.d_sae}, ., {self.d_out})"
            )

    @property
    def n_write(self) -> int:
        """How many layers each feature writes to: `layer .. layer + n_write - 1`."""
        assert self.W_dec_cross is not None  # `__check_init__`
        return self.W_dec_cross.shape[1]

    @property
    def write_layers(self) -> tuple[int, ...]:
        """The layers whose MLP output the features write into, in order."""
        return tuple(range(self.layer, self.layer + self.n_write))

    def cross_layer_decoders(self) -> Float[Array, "d_sae n_write d_out"]:
        """`d_{l->j}` of every feature, `[:, j - layer]` for write layer `j`."""
        assert self.W_dec_cross is not None  # `__check_init__`
        return self.W_dec_cross


def cross_layer_transcoder(
    own_layer: Dictionary, decoders: Float[Array, "d_sae n_write d_out"]
) -> CrossLayerTranscoder:
    """`own_layer` (the transcoder of its layer, `W_dec = d_{l->l}`) with every decoder vector
    `decoders [d_sae, n_write, d_out]` of its features attached."""
    fields = {f.name: getattr(own_layer, f.name) for f in dataclasses.fields(own_layer)}
    return CrossLayerTranscoder(**fields, W_dec_cross=decoders)


def is_cross_layer(d) -> bool:
    """Whether `d` writes into several layers (a `CrossLayerTranscoder`)."""
    return isinstance(d, CrossLayerTranscoder)


def refuse_cross_layer(dictionaries, what: str) -> None:
    """Raise `DictionaryError` naming the first cross-layer transcoder among `dictionaries` (one
    or several): `what` is defined for dictionaries that write into one layer only."""
    items = [dictionaries] if isinstance(dictionaries, Dictionary) else list(dictionaries)
    for d in items:
        if is_cross_layer(d):
            raise DictionaryError(
                f"{what} is not defined for the cross-layer transcoder {d.name!r} (layer {d.layer}, writes into "
                f"layers {d.layer}..{d.layer + d.n_write - 1}); load it per layer "
                "(load_dictionary(..., cross_layer=False)) to use its own layer's decoder"
            )


def check_spans_model(d: CrossLayerTranscoder, n_layers: int) -> None:
    """Refuse a cross-layer transcoder whose writes do not end at the model's last layer."""
    if d.layer + d.n_write != n_layers:
        raise DictionaryError(
            f"cross-layer transcoder {d.name!r} of layer {d.layer} writes into {d.n_write} layers "
            f"(up to layer {d.layer + d.n_write - 1}), but the model has {n_layers} layers"
        )


__all__ = [
    "CrossLayerTranscoder",
    "check_spans_model",
    "cross_layer_transcoder",
    "is_cross_layer",
    "refuse_cross_layer",
]
