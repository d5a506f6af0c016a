"""Consistency checks of a `Dictionary`'s shapes and options (run by its `__check_init__`)."""

from . import activations as act
from .errors import DictionaryError
from .normalization import INPUT_NORMS
from .sites import KINDS, SAE_SITES, TRANSCODER_INPUT_SITES, TRANSCODER_OUTPUT_SITES


def _fail(d, message: str) -> None:
    where = d.info.source or d.name
    raise DictionaryError(f"dictionary {where!r}: {message}")


def check_dictionary(d) -> None:
    """Shapes and options are consistent; raises DictionaryError naming the problem."""
    if len(d.W_enc.shape) != 2 or len(d.W_dec.shape) != 2:
        _fail(d, f"W_enc {d.W_enc.shape} and W_dec {d.W_dec.shape} must both be 2-D")
    d_in, d_sae = d.W_enc.shape
    if d.W_dec.shape[0] != d_sae:
        _fail(d, f"W_dec has {d.W_dec.shape[0]} rows but W_enc has {d_sae} columns (d_sae)")
    d_out = d.W_dec.shape[1]
    shapes = {
        "b_enc": (d_sae,),
        "b_dec": (d_out,),
        "threshold": (d_sae,),
        "b_mag": (d_sae,),
        "r_mag": (d_sae,),
        "W_skip": (d_out, d_in),
        "input_scale": (),
        "log_sparsity": (d_sae,),
        "W_gate": (d_in, d_sae),
        "b_gate": (d_sae,),
    }
    for key, shape in shapes.items():
        value = getattr(d, key)
        if value is not None and tuple(value.shape) != shape:
            _fail(d, f"{key} has shape {tuple(value.shape)}, expected {shape}")
    if d.activation not in act.ACTIVATIONS:
        _fail(d, f"unknown activation {d.activation!r}; expected one of {act.ACTIVATIONS}")
    needs = {"jumprelu": ("threshold",), "gated": ("b_mag", "r_mag"), "mlp": ("mlp_activation",)}.get(d.activation, ())
    for key in needs:
        if getattr(d, key) is None:
            _fail(d, f"activation {d.activation!r} needs {key}")
    if d.activation in ("topk", "abstopk", "groupmax"):
        if not isinstance(d.k, int) or not 0 < d.k <= d_sae:
            _fail(d, f"activation {d.activation!r} needs an integer k in 1..{d_sae}, got {d.k!r}")
        if d.activation == "groupmax" and d_sae % d.k:
            _fail(d, f"groupmax needs d_sae ({d_sae}) divisible by k ({d.k})")
    if d.input_norm not in INPUT_NORMS:
        _fail(d, f"unknown input_norm {d.input_norm!r}; expected one of {INPUT_NORMS}")
    if (d.input_norm == "scale") != (d.input_scale is not None):
        _fail(d, "input_norm 'scale' and input_scale go together")
    if d.apply_b_dec_to_input and d_in != d_out:
        _fail(d, f"apply_b_dec_to_input needs d_in == d_out, got {d_in} and {d_out}")
    if d.kind not in KINDS:
        _fail(d, f"unknown kind {d.kind!r}; expected one of {KINDS}")
    if not isinstance(d.layer, int) or d.layer < 0:
        _fail(d, f"layer must be a non-negative int, got {d.layer!r}")
    if d.kind == "sae":
        if d.site_in not in SAE_SITES or d.site_out != d.site_in:
            _fail(d, f"an SAE reads and writes one of {SAE_SITES}; got {d.site_in} -> {d.site_out}")
        if d_in != d_out:
            _fail(d, f"an SAE has d_in == d_out, got {d_in} and {d_out}")
    else:
        if d.site_in not in TRANSCODER_INPUT_SITES or d.site_out not in TRANSCODER_OUTPUT_SITES:
            _fail(
                d,
                f"a transcoder reads {TRANSCODER_INPUT_SITES} and writes "
                f"{TRANSCODER_OUTPUT_SITES}; got {d.site_in} -> {d.site_out}",
            )
