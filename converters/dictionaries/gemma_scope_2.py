"""Gemma Scope 2 (Gemma 3): a folder with `config.json` + `params.safetensors`.

`config.json`: `architecture: "jump_relu"`, `type: "sae" | "transcoder"`, `hf_hook_point_in`,
`hf_hook_point_out`, `affine_connection`, `width`, `l0`, `model_name`. Weights use lowercase
keys: `w_enc [d_in, d_sae]`, `w_dec [d_sae, d_out]`, `b_enc`, `b_dec`, `threshold`, and for
affine (skip) transcoders `affine_skip_connection [d_in, d_out]`, added as `x @ A`
(stored here as `W_skip = A.T`). JumpReLU, no `b_dec` subtraction, no normalization.
Hook points are Hugging Face module paths of Gemma 3 and decide layer and site; the folder
name (`layer_{L}_width_{W}_l0_{size}`) is cross-checked. SAE folders: `resid_post`
(`model.layers.L.output`), `mlp_out` (`post_feedforward_layernorm.output`, after the MLP's
post-norm) and `attn_out`, whose hook is `self_attn.o_proj.input`: the heads' outputs before
the output projection, so these SAEs sit at `z` (width `n_heads * head_dim`), whatever the
folder is called (docs/dictionaries.md). Cross-layer transcoders (a `w_dec`
with a target-layer axis) are refused: summing that axis is only valid for activations.
The large `examples.safetensors` next to the weights is never read.
"""

import re
from pathlib import Path

from qlens_jax.dictionaries import Dictionary, DictionaryError, DictionaryInfo, parse_hook_name

from .assemble import (
    COMMON_OPTIONS,
    Claim,
    Options,
    build,
    check_width_label,
    expect_shape,
    require,
    resolve,
)
from .readers import TensorStore, read_json, read_safetensors
from .schema import Field, check_config

FORMAT = "gemma_scope_2"
OPTIONS = COMMON_OPTIONS
CONFIG_FILE, PARAMS_FILE = "config.json", "params.safetensors"
_MODEL_TYPE = "gemma3_text"  # hook names are Gemma 3 module paths whatever model is passed
SCHEMA = (
    Field("architecture", "str"),
    Field("type", "str", True),
    Field("hf_hook_point_in", "str", True),
    Field("hf_hook_point_out", "str"),
    Field("affine_connection", "bool"),
    Field("width", "str|int"),
    Field("l0", "str|float"),
    Field("model_name", "str"),
)


def is_gemma_scope_2_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / PARAMS_FILE).is_file()


def load(path: Path, opts: Options) -> Dictionary:
    """Read a Gemma Scope 2 folder (`config.json` + `params.safetensors`)."""
    cfg_origin, origin = str(path / CONFIG_FILE), str(path / PARAMS_FILE)
    cfg = check_config(read_json(path / CONFIG_FILE), SCHEMA, cfg_origin)
    if cfg.get("architecture") != "jump_relu":
        raise DictionaryError(
            f"{cfg_origin}: architecture {cfg.get('architecture')!r} is not "
            "'jump_relu', the only one Gemma Scope 2 publishes"
        )
    kind = require(cfg, "type", cfg_origin)
    if kind not in ("sae", "transcoder"):
        raise DictionaryError(f"{cfg_origin}: type {kind!r} is not 'sae' or 'transcoder'")
    hook_in = require(cfg, "hf_hook_point_in", cfg_origin)
    hook_out = cfg.get("hf_hook_point_out") if kind == "transcoder" else None
    claims = [Claim(*parse_hook_name(hook_in, _MODEL_TYPE), f"hf_hook_point_in {hook_in!r}")]
    m = re.search(r"layer_(\d+)", path.name)
    if m:
        claims.append(Claim(int(m.group(1)), None, f"the folder name {path.name!r}"))
    layer, site_in = resolve(claims, layer=opts.layer, site=opts.site, origin=cfg_origin)
    site_out = site_in
    if kind == "transcoder":
        out = Claim(
            *parse_hook_name(require(cfg, "hf_hook_point_out", cfg_origin), _MODEL_TYPE),
            f"hf_hook_point_out {hook_out!r}",
        )
        _, site_out = resolve([out, Claim(layer, None, "hf_hook_point_in")], layer=None, site=None, origin=cfg_origin)

    store = TensorStore(read_safetensors(path / PARAMS_FILE), origin)
    w_dec = store.take("w_dec")
    if w_dec.ndim == 3:
        raise DictionaryError(
            f"{origin}: w_dec {w_dec.shape} has a target-layer axis: a cross-layer "
            "transcoder, which Query Lens does not support"
        )
    b_enc, b_dec = store.take("b_enc"), store.take("b_dec")
    d_sae, d_out = b_enc.shape[0], b_dec.shape[0]
    w_enc = store.take("w_enc")
    # an SAE's width is its own (checked against the model when the Dictionary is built)
    d_in = d_out if kind == "sae" else (opts.model.d_model if opts.model is not None else w_enc.shape[0])
    arrays = {
        "W_enc": expect_shape(w_enc, (d_in, d_sae), origin=origin, key="w_enc", axes="[d_in, d_sae]"),
        "b_enc": expect_shape(b_enc, (d_sae,), origin=origin, key="b_enc", axes="[d_sae]"),
        "W_dec": expect_shape(w_dec, (d_sae, d_out), origin=origin, key="w_dec", axes="[d_sae, d_out]"),
        "b_dec": b_dec,
        "threshold": expect_shape(store.take("threshold"), (d_sae,), origin=origin, key="threshold", axes="[d_sae]"),
    }
    affine = bool(cfg.get("affine_connection", False))
    if store.has("affine_skip_connection") != affine:
        raise DictionaryError(
            f"{cfg_origin}: affine_connection is {affine} but {origin} "
            f"{'has' if store.has('affine_skip_connection') else 'lacks'} 'affine_skip_connection' "
            "(some transcoders were uploaded without it; refusing to guess)"
        )
    if affine:
        skip = expect_shape(
            store.take("affine_skip_connection"),
            (d_in, d_out),
            origin=origin,
            key="affine_skip_connection",
            axes="[d_in, d_out]",
        )
        arrays["W_skip"] = skip.T
    store.finish()
    width = re.search(r"width_([^_/]+)", path.name)
    label = width.group(1) if width else (cfg["width"] if isinstance(cfg.get("width"), str) else None)
    if label:
        check_width_label(label, d_sae, origin)
    info = DictionaryInfo(
        format=FORMAT,
        source=str(path),
        architecture="jump_relu",
        model_name=cfg.get("model_name"),
        hf_hook_name=hook_in,
        hf_hook_name_out=hook_out,
    )
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
