"""Gemma Scope (Gemma 2) `params.npz`: JumpReLU SAEs and transcoders with no config file.

Keys `W_enc [d_in, d_sae]`, `W_dec [d_sae, d_out]`, `b_enc`, `b_dec`, `threshold` (a lowercase
`w_` prefix is accepted, as sae_lens does). `acts = relu(pre) * (pre > threshold)`, no `b_dec`
subtraction, no normalization (Google's tutorial code and sae_lens's `gemma_2` loader).

Placement comes from the path: `layer_{L}/width_{W}/average_l0_{N}` gives the layer and width,
and the release name (as in a Hugging Face cache path) gives the site: `-res` is
`resid_post`, `-mlp` is `mlp_out` (after Gemma 2's post-norm, TransformerLens `hook_mlp_out`),
`-att` is `z` (`attn.hook_z`, the heads' outputs concatenated, `d_in = n_heads * head_dim`),
`-transcoders` read `mlp_in`. Without a release name, pass `site=` (`resid_post`, `mlp_out`,
`z`, or `mlp_in` for transcoders). Embedding SAEs are refused.
"""

import os
import re
from pathlib import Path

from qlens_jax.dictionaries import Dictionary, DictionaryError, DictionaryInfo

from .assemble import COMMON_OPTIONS, Claim, Options, build, check_width_label, expect_shape, resolve
from .readers import TensorStore, read_npz

FORMAT = "gemma_scope"
OPTIONS = COMMON_OPTIONS
PARAMS_FILE = "params.npz"


# Release suffix -> input site (sae_lens `get_gemma_2_config_from_hf`: `res` is
# `hook_resid_post`, `mlp` is `hook_mlp_out`, `att` is `attn.hook_z`, flattened heads).
_RELEASE_SITES = {"res": "resid_post", "mlp": "mlp_out", "att": "z", "transcoders": "mlp_in"}


def _release_site(text: str) -> Claim | None:
    """Site claimed by a Gemma Scope release name found in the path."""
    m = re.search(r"gemma-scope-[\w.]+?-(?:pt|it)-(res|mlp|att|transcoders)\b", text)
    if m is None:
        return None
    return Claim(None, _RELEASE_SITES[m.group(1)], f"the release name {m.group(0)!r} in the path")


def load(path: Path, opts: Options) -> Dictionary:
    """Read `params.npz` (or the folder holding it)."""
    npz = path / PARAMS_FILE if path.is_dir() else path
    origin = str(npz)
    text = str(Path(os.path.abspath(npz)).as_posix())
    if "embedding" in text:
        raise DictionaryError(f"{origin}: Gemma Scope embedding SAEs are not a Query Lens site")
    claims = []
    m = re.search(r"layer_(\d+)", text)
    if m:
        claims.append(Claim(int(m.group(1)), None, f"the folder name {m.group(0)!r}"))
    release = _release_site(text)
    if release:
        claims.append(release)
    layer, site_in = resolve(claims, layer=opts.layer, site=opts.site, origin=origin)
    kind = "transcoder" if site_in in ("mlp_in",) else "sae"
    site_out = "mlp_out" if kind == "transcoder" else site_in

    raw = read_npz(npz)
    for key in list(raw):
        if key.startswith("w_"):
            canonical = "W_" + key[2:]
            if canonical in raw:
                raise DictionaryError(f"{origin}: both {key!r} and {canonical!r} present")
            raw[canonical] = raw.pop(key)
    store = TensorStore(raw, origin)
    b_enc, b_dec = store.take("b_enc"), store.take("b_dec")
    if b_enc.ndim != 1 or b_dec.ndim != 1:
        raise DictionaryError(f"{origin}: b_enc {b_enc.shape} and b_dec {b_dec.shape} must be 1-D")
    d_sae, d_out = b_enc.shape[0], b_dec.shape[0]
    # an SAE's width is its own (checked against the model when the Dictionary is built)
    d_in = d_out if kind == "sae" else (opts.model.d_model if opts.model is not None else None)
    w_enc = store.take("W_enc")
    if d_in is None:  # a transcoder without a model: the format fixes [d_in, d_sae]
        d_in = w_enc.shape[0]
    arrays = {
        "W_enc": expect_shape(w_enc, (d_in, d_sae), origin=origin, key="W_enc", axes="[d_in, d_sae]"),
        "b_enc": b_enc,
        "W_dec": expect_shape(store.take("W_dec"), (d_sae, d_out), origin=origin, key="W_dec", axes="[d_sae, d_out]"),
        "b_dec": b_dec,
        "threshold": expect_shape(store.take("threshold"), (d_sae,), origin=origin, key="threshold", axes="[d_sae]"),
    }
    store.finish()
    width = re.search(r"width_(\w+?)(?:/|$)", text)
    label = width.group(1) if width else None
    if label:
        check_width_label(label, d_sae, origin)
    info = DictionaryInfo(format=FORMAT, source=origin, architecture=f"jumprelu_{kind}")
    return build(
        opts,
        arrays=arrays,
        layer=layer,
        site_in=site_in,
        site_out=site_out,
        kind=kind,
        activation="jumprelu",
        info=info,
        label=label,
        rectify=True,
    )
