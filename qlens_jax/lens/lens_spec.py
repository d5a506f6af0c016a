"""Lenses as typed values: `Lens(vector, transition, readout)`.

A lens reads a feature's value or key vector (`vector`), carries it through the residual stream
(`transition`: not at all, single hops, or the whole linearized model) and reads it out in
vocabulary space (`readout`), as the authors' `run.py` composes its baselines from
`feature_vector`, `stream_transition` and `readout` (docs/definitions.md section 1). The six
lenses of the paper are presets named as before (`logit_lens_value`, ..., `query_lens_key`);
any other accepted combination is written `VECTOR:TRANSITION:READOUT`, e.g.
`value:identity:embed`.

Their `run.py` ignores `readout` for a transported vector (the value side is always read by the
unembedding, the key side by the centred cosine), so those combinations are the only ones
accepted with a transition; the identity transition takes every readout.
"""

from __future__ import annotations

from dataclasses import dataclass

from qlens_jax.lens.validation import LensRequestError

VECTORS = ("value", "key")
TRANSITIONS = ("identity", "first_order", "full")
READOUTS = ("unembed", "embed", "embed_cosine_centered")
# the readout a transported vector of each side always has in the authors' code
TRANSPORTED_READOUT = {"value": "unembed", "key": "embed_cosine_centered"}


@dataclass(frozen=True)
class Lens:
    """One lens: which vector, which transition, which readout (module docstring)."""

    vector: str
    transition: str
    readout: str

    @property
    def name(self) -> str:
        """The preset's name, else `VECTOR:TRANSITION:READOUT` (what outputs call the lens)."""
        return PRESET_NAMES.get(self, f"{self.vector}:{self.transition}:{self.readout}")

    @property
    def side(self) -> str:
        """ "value" or "key": which dictionary vector the lens reads."""
        return self.vector

    @property
    def transports(self) -> bool:
        """Whether the vector is carried through the model (all but the identity)."""
        return self.transition != "identity"

    @property
    def sweep(self) -> str | None:
        """The dense operator sweep the lens reads (None for the identity)."""
        if not self.transports:
            return None
        return self.vector if self.transition == "full" else "first_order"

    def __str__(self) -> str:
        return self.name


PRESETS = {
    "logit_lens_value": Lens("value", "identity", "unembed"),
    "logit_lens_key": Lens("key", "identity", "embed"),
    "first_order_value": Lens("value", "first_order", "unembed"),
    "first_order_key": Lens("key", "first_order", "embed_cosine_centered"),
    "query_lens_value": Lens("value", "full", "unembed"),
    "query_lens_key": Lens("key", "full", "embed_cosine_centered"),
}
PRESET_NAMES = {lens: name for name, lens in PRESETS.items()}
ACCEPTED = tuple(
    Lens(vector, transition, readout)
    for vector in VECTORS
    for transition in TRANSITIONS
    for readout in READOUTS
    if transition == "identity" or readout == TRANSPORTED_READOUT[vector]
)


def _choice(part: str, value: str, accepted: tuple[str, ...], spec: str) -> str:
    if value not in accepted:
        raise LensRequestError(f"lens {spec!r}: unknown {part} {value!r}; choose from {', '.join(accepted)}")
    return value


def parse_lens(spec: str | Lens) -> Lens:
    """`spec` as a `Lens`: a `Lens`, a preset name or `VECTOR:TRANSITION:READOUT`;
    `LensRequestError` naming the unknown part and the accepted values."""
    if isinstance(spec, Lens):
        lens = spec
    elif not isinstance(spec, str):
        raise LensRequestError(f"lens {spec!r}: not a lens name or VECTOR:TRANSITION:READOUT spec")
    elif spec in PRESETS:
        return PRESETS[spec]
    elif ":" not in spec:
        raise LensRequestError(
            f"unknown lens {spec!r}; choose from {', '.join(PRESETS)} or a spec VECTOR:TRANSITION:READOUT"
        )
    else:
        parts = spec.split(":")
        if len(parts) != 3:
            raise LensRequestError(f"lens {spec!r}: a spec has three parts, VECTOR:TRANSITION:READOUT")
        lens = Lens(
            _choice("vector", parts[0], VECTORS, spec),
            _choice("transition", parts[1], TRANSITIONS, spec),
            _choice("readout", parts[2], READOUTS, spec),
        )
    if lens not in ACCEPTED:
        raise LensRequestError(
            f"lens {lens.name!r}: readout {lens.readout!r} is not used with transition {lens.transition!r}: a "
            f"transported {lens.vector} vector is read by {TRANSPORTED_READOUT[lens.vector]} (as the authors' run.py "
            "reads it whatever its readout option says)"
        )
    return lens


def lens_name(spec: str | Lens) -> str:
    """The canonical name of a lens spec (a preset's name when it is one)."""
    return parse_lens(spec).name
