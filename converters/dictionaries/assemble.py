"""What every dictionary converter shares: the caller's options, orientation checks, resolving
layer and site from what the file says and what the caller asked, and building the module."""

import dataclasses
import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from qlens_jax.dictionaries import (
    Dictionary,
    DictionaryError,
    DictionaryInfo,
    ModelFacts,
    default_name,
    fold_input_scale,
    validate_dictionary,
)


@dataclasses.dataclass
class Options:
    """Caller options of `load_dictionary`; each converter declares the ones it understands.

    layer, site: where the dictionary sits, when the file does not say (or to confirm it:
        a disagreement with the file is an error). `site` is the input site.
    name: the dictionary's name (default like `resid-post-32k`).
    dtype: cast parameters to this dtype (default: keep the stored dtype).
    norm_scaling_factor: the constant input scale of sae_lens `expected_average_only_in`
        dictionaries (published in the release registry, not in the files).
    fold_norm_scaling_factor: fold that scale into the weights as sae_lens's
        `from_pretrained` does (True), or keep it as an explicit input scale (False).
    k: TopK size for formats that do not store it (Qwen-Scope outside its repo folder).
    cross_layer: a cross-layer transcoder's layer keeps every later layer's decoder (True), or
        only its own layer's (False, as sae_lens's registry lists them).
    """

    layer: int | None = None
    site: str | None = None
    name: str | None = None
    dtype: Any = None
    norm_scaling_factor: float | None = None
    fold_norm_scaling_factor: bool = True
    k: int | None = None
    cross_layer: bool = True
    model: ModelFacts | None = None

    def given(self) -> set[str]:
        """Names of the options the caller set (model and defaults excluded)."""
        defaults = Options()
        return {
            f.name
            for f in dataclasses.fields(self)
            if f.name != "model" and getattr(self, f.name) != getattr(defaults, f.name)
        }

    @property
    def model_type(self) -> str | None:
        return self.model.model_type if self.model is not None else None


COMMON_OPTIONS = frozenset({"layer", "site", "name", "dtype"})


# ---- orientation --------------------------------------------------------------------------
def expect_shape(arr: np.ndarray, shape: tuple[int, ...], *, origin: str, key: str, axes: str) -> np.ndarray:
    """Assert `arr` has the layout the format fixes (`axes`, e.g. "[d_sae, d_in]")."""
    shape = tuple(int(s) for s in shape)
    if arr.shape == shape:
        return arr
    if arr.ndim == 2 and len(shape) == 2 and arr.shape == shape[::-1]:
        raise DictionaryError(
            f"{origin}: key {key!r} has shape {arr.shape}, but this format stores it as {axes} "
            f"= {shape}: it is transposed (a file of another format, or re-saved the other way?)"
        )
    raise DictionaryError(f"{origin}: key {key!r} has shape {arr.shape}, expected {axes} = {shape}")


def orient(arr: np.ndarray, rows: int, cols: int, *, origin: str, key: str, axes: str) -> np.ndarray:
    """For formats that do not fix a matrix's orientation: return it as `[rows, cols]`,
    deciding from the known sizes. A square matrix is ambiguous and refused."""
    if arr.ndim == 2 and rows == cols and arr.shape == (rows, cols):
        raise DictionaryError(
            f"{origin}: key {key!r} is square {arr.shape} and this format does not fix its "
            f"orientation, so {axes} cannot be told from its transpose; refusing to guess"
        )
    if arr.shape == (rows, cols):
        return arr
    if arr.shape == (cols, rows):
        return arr.T
    raise DictionaryError(
        f"{origin}: key {key!r} has shape {arr.shape}, expected {axes} = {(rows, cols)} or its transpose"
    )


def require(cfg: dict, key: str, origin: str) -> Any:
    """`cfg[key]`, or an error naming the key and the file."""
    if key not in cfg or cfg[key] is None:
        raise DictionaryError(f"{origin}: missing config key {key!r}")
    return cfg[key]


# ---- placement ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Claim:
    """What one piece of evidence (a hook name, a folder name) says about the placement."""

    layer: int | None
    site: str | None
    evidence: str


def resolve(claims: list[Claim], *, layer: int | None, site: str | None, origin: str) -> tuple[int, str]:
    """Combine the file's claims with the caller's `layer`/`site`; any disagreement is an error
    naming both sides; a placement nobody states is an error asking for it."""
    if layer is not None:
        claims = [Claim(layer, None, f"load_dictionary(layer={layer})")] + claims
    if site is not None:
        claims = [Claim(None, site, f"load_dictionary(site={site!r})")] + claims
    result = {}
    for field in ("layer", "site"):
        first = None
        for c in claims:
            value = getattr(c, field)
            if value is None:
                continue
            if first is None:
                first = c
            elif getattr(first, field) != value:
                raise DictionaryError(
                    f"{origin}: {first.evidence} gives {field} {getattr(first, field)!r}, but "
                    f"{c.evidence} gives {field} {value!r}"
                )
        if first is None:
            raise DictionaryError(
                f"{origin}: cannot tell the dictionary's {field} from the file; pass {field}=... to load_dictionary"
            )
        result[field] = getattr(first, field)
    return result["layer"], result["site"]


_WIDTH = re.compile(r"^(\d+(?:\.\d+)?)([km])$", re.IGNORECASE)


def check_width_label(label: str, d_sae: int, origin: str) -> None:
    """Releases write widths as '16k', '131k', '1m' (base 1000 or 1024); refuse a mismatch."""
    m = _WIDTH.match(label)
    if not m:
        return
    n, unit = float(m.group(1)), m.group(2).lower()
    ok = any(int(d_sae / b) == n or round(d_sae / b) == n for b in ((1000, 1024) if unit == "k" else (1e6, 2**20)))
    if not ok:
        raise DictionaryError(f"{origin}: the path says width {label!r} but the weights have d_sae={d_sae}")


# ---- building -----------------------------------------------------------------------------
def to_jax(arr: np.ndarray | None, dtype) -> jnp.ndarray | None:
    if arr is None:
        return None
    return jnp.asarray(arr, dtype=dtype) if dtype is not None else jnp.asarray(arr)


def build(
    opts: Options,
    *,
    arrays: dict[str, np.ndarray | None],
    layer: int,
    site_in: str,
    site_out: str,
    kind: str,
    activation: str,
    info: DictionaryInfo,
    label: str | None = None,
    k: int | None = None,
    rectify: bool = True,
    apply_b_dec_to_input: bool = False,
    input_norm: str = "none",
    denormalize_output: bool = True,
    rescale_acts_by_decoder_norm: bool = False,
    fold_scale: bool = False,
) -> Dictionary:
    """Make the `Dictionary` (dtype as stored unless `opts.dtype`), fold a constant input scale
    when asked, and validate it against the model when there is one."""
    d_sae = arrays["W_enc"].shape[1]
    # convert one array at a time, dropping each numpy copy as soon as it is on the device
    params = {key: to_jax(arrays.pop(key), opts.dtype) for key in list(arrays)}
    d = Dictionary(
        **params,
        layer=int(layer),
        site_in=site_in,
        site_out=site_out,
        kind=kind,
        name=opts.name or default_name(kind, site_in, d_sae, label),
        activation=activation,
        k=k,
        rectify=rectify,
        apply_b_dec_to_input=apply_b_dec_to_input,
        input_norm=input_norm,
        denormalize_output=denormalize_output,
        rescale_acts_by_decoder_norm=rescale_acts_by_decoder_norm,
        info=info,
    )
    if fold_scale:
        d = fold_input_scale(d)
    if opts.model is not None:
        validate_dictionary(d, opts.model)
    return d
