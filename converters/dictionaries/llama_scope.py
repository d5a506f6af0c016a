"""Llama Scope (OpenMOSS `lm_saes`, Llama-3.1-8B): a folder
`Llama3_1-8B-Base-L{L}{R|A|M|TC}-{8x|32x}` with `hyperparams.json` + `checkpoints/final.safetensors`.

Weights in torch `Linear` layout (usually bfloat16): `encoder.weight [d_sae, d_model]`,
`encoder.bias [d_sae]`, `decoder.weight [d_model, d_sae]`, `decoder.bias [d_model]`.
`hyperparams.json`: `d_model`, `d_sae`, TransformerLens `hook_point_in` / `hook_point_out`,
`act_fn: "jumprelu"` with one scalar `jump_relu_threshold`, `norm_activation: "dataset-wise"`
with `dataset_average_activation_norm: {in, out}`, `sparsity_include_decoder_norm`,
`apply_decoder_bias_to_pre_encoder`, `use_glu_encoder`, and training settings (ignored).

Forward pass, as lm_saes loads it for inference (`standardize_parameters_of_dataset_activation_scaling`,
then `transform_to_unit_decoder_norm` when `sparsity_include_decoder_norm`), written in the
units of its training inputs: with `s = sqrt(d_model) / norm_in` and `n_i` the norm of decoder
column `i` (1 without `sparsity_include_decoder_norm`),

    pre_i = n_i * ((s x) @ encoder.weight[i] + encoder.bias[i])
    acts  = relu(pre) * (pre > s * jump_relu_threshold)
    out   = ((acts / n) @ decoder.weight.T + decoder.bias) / s

(`jump_relu_threshold` is stored in the units of raw inputs, hence `s *`). That is a JumpReLU
`Dictionary` with `W_enc = encoder.weight.T * n`, `b_enc = encoder.bias * n`,
`W_dec = decoder.weight.T / n` (lm_saes's own unit-decoder-norm transform; computed in
float32, stored in the file's dtype), `threshold = s * jump_relu_threshold` for every
feature, and the constant input scale `s`, folded into the weights as sae_lens's
`from_pretrained` does unless `fold_norm_scaling_factor=False`. Where the decoder norms are 1
this is exactly sae_lens's `llama_scope` loader followed by that folding.

Sites from the hooks, cross-checked with the folder name: `R` `hook_resid_post`, `A`
`hook_attn_out` (Llama has no post-norms: the `o_proj` output), `M` `hook_mlp_out`. `TC`
transcoders (different input and output norms) are refused.
"""

import math
import re
from pathlib import Path

import numpy as np

from qlens_jax.dictionaries import Dictionary, DictionaryError, DictionaryInfo, parse_hook_name

from .assemble import COMMON_OPTIONS, Claim, Options, build, expect_shape, require, resolve
from .readers import TensorStore, read_json, read_safetensors
from .schema import Field, check_config

FORMAT = "llama_scope"
OPTIONS = COMMON_OPTIONS | {"fold_norm_scaling_factor"}
CONFIG_FILE, WEIGHTS_FILE = "hyperparams.json", "checkpoints/final.safetensors"
_FOLDER = re.compile(r"(?:^|-)L(\d+)(TC|R|A|M)(?:-|$)")
_FOLDER_SITES = {"R": "resid_post", "A": "attn_out", "M": "mlp_out"}
SCHEMA = (
    Field("d_model", "int", True, 1),
    Field("d_sae", "int", True, 1),
    Field("hook_point_in", "str", True),
    Field("hook_point_out", "str"),
    Field("act_fn", "str"),
    Field("jump_relu_threshold", "float", True),
    Field("norm_activation", "str"),
    Field("dataset_average_activation_norm", "dict"),
    Field("dataset_average_activation_norm.in", "float"),
    Field("dataset_average_activation_norm.out", "float"),
    Field("sparsity_include_decoder_norm", "bool"),
    Field("apply_decoder_bias_to_pre_encoder", "bool"),
    Field("use_glu_encoder", "bool"),
    Field("use_decoder_bias", "bool"),
)
# Options lm_saes applies at inference that this converter does not reproduce.
_REFUSED_IF_TRUE = {
    "apply_decoder_bias_to_pre_encoder": "subtracts the decoder bias from the scaled input",
    "use_glu_encoder": "gates the encoder with a second (GLU) encoder",
}


def is_llama_scope_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def folder_of(path: Path) -> Path:
    """The dictionary folder for a path to its `checkpoints/final.safetensors` or itself."""
    if path.name == "final.safetensors" and path.parent.name == "checkpoints":
        return path.parent.parent
    return path


def _placement(cfg: dict, path: Path, opts: Options, origin: str) -> tuple[int, str]:
    hook_in = require(cfg, "hook_point_in", origin)
    hook_out = cfg.get("hook_point_out", hook_in)
    if hook_out != hook_in:
        raise DictionaryError(
            f"{origin}: hook_point_in {hook_in!r} and hook_point_out {hook_out!r} "
            "differ: a Llama Scope transcoder (LXTC), whose input and output "
            "norms differ; not supported"
        )
    claims = [Claim(*parse_hook_name(hook_in, opts.model_type), f"hook_point_in {hook_in!r}")]
    m = _FOLDER.search(path.name)
    if m:
        if m.group(2) == "TC":
            raise DictionaryError(f"{path}: a Llama Scope transcoder (LXTC) is not supported")
        claims.append(Claim(int(m.group(1)), _FOLDER_SITES[m.group(2)], f"the folder name {path.name!r}"))
    return resolve(claims, layer=opts.layer, site=opts.site, origin=origin)


def _input_scale(cfg: dict, d_model: int, origin: str) -> float:
    """`s = sqrt(d_model) / norm_in` of `norm_activation: dataset-wise`."""
    if cfg.get("norm_activation") != "dataset-wise":
        raise DictionaryError(
            f"{origin}: norm_activation {cfg.get('norm_activation')!r} is not "
            "supported (Llama Scope publishes 'dataset-wise')"
        )
    norms = require(cfg, "dataset_average_activation_norm", origin)
    if not isinstance(norms, dict) or "in" not in norms:
        raise DictionaryError(f"{origin}: dataset_average_activation_norm {norms!r} has no 'in'")
    norm_in, norm_out = float(norms["in"]), float(norms.get("out", norms["in"]))
    if norm_in != norm_out:
        raise DictionaryError(
            f"{origin}: dataset_average_activation_norm in={norm_in} and "
            f"out={norm_out} differ, but an SAE reads and writes one site"
        )
    if not (math.isfinite(norm_in) and norm_in > 0):
        raise DictionaryError(f"{origin}: dataset_average_activation_norm in={norm_in} must be positive")
    return math.sqrt(d_model) / norm_in


def load(path: Path, opts: Options) -> Dictionary:
    """Read a Llama Scope folder (`hyperparams.json` + `checkpoints/final.safetensors`)."""
    path = folder_of(path)
    cfg_origin, origin = str(path / CONFIG_FILE), str(path / WEIGHTS_FILE)
    cfg = check_config(read_json(path / CONFIG_FILE), SCHEMA, cfg_origin)
    if cfg.get("act_fn") != "jumprelu":
        raise DictionaryError(
            f"{cfg_origin}: act_fn {cfg.get('act_fn')!r} is not supported (Llama Scope publishes 'jumprelu')"
        )
    for key, why in _REFUSED_IF_TRUE.items():
        if cfg.get(key):
            raise DictionaryError(f"{cfg_origin}: {key}=true is not supported: it {why}")
    if cfg.get("use_decoder_bias") is False:
        raise DictionaryError(f"{cfg_origin}: use_decoder_bias=false is not supported")
    d_model, d_sae = int(require(cfg, "d_model", cfg_origin)), int(require(cfg, "d_sae", cfg_origin))
    theta = float(require(cfg, "jump_relu_threshold", cfg_origin))
    scale = _input_scale(cfg, d_model, cfg_origin)
    layer, site = _placement(cfg, path, opts, cfg_origin)

    store = TensorStore(read_safetensors(path / WEIGHTS_FILE), origin)
    w_enc = expect_shape(
        store.take("encoder.weight"), (d_sae, d_model), origin=origin, key="encoder.weight", axes="[d_sae, d_model]"
    ).T
    b_enc = expect_shape(store.take("encoder.bias"), (d_sae,), origin=origin, key="encoder.bias", axes="[d_sae]")
    w_dec = expect_shape(
        store.take("decoder.weight"), (d_model, d_sae), origin=origin, key="decoder.weight", axes="[d_model, d_sae]"
    ).T
    b_dec = expect_shape(store.take("decoder.bias"), (d_model,), origin=origin, key="decoder.bias", axes="[d_model]")
    store.finish()
    if cfg.get("sparsity_include_decoder_norm", False):
        w_enc, b_enc, w_dec = _unit_decoder_norm(w_enc, b_enc, w_dec, origin)
    arrays = {
        "W_enc": w_enc,
        "b_enc": b_enc,
        "W_dec": w_dec,
        "b_dec": b_dec,
        "threshold": np.full((d_sae,), theta * scale, dtype=np.float32).astype(b_enc.dtype),
        "input_scale": np.asarray(scale, dtype=np.float32),
    }
    info = DictionaryInfo(format=FORMAT, source=str(path), architecture="jumprelu", hook_name=cfg["hook_point_in"])
    return build(
        opts,
        arrays=arrays,
        layer=layer,
        site_in=site,
        site_out=site,
        kind="sae",
        activation="jumprelu",
        info=info,
        rectify=True,
        input_norm="scale",
        fold_scale=opts.fold_norm_scaling_factor,
    )


def _unit_decoder_norm(w_enc, b_enc, w_dec, origin: str):
    """lm_saes `transform_to_unit_decoder_norm`: decoder rows to unit norm, norms moved into
    the encoder columns and biases (the gate then sees `n_i * pre_i`)."""
    norms = np.linalg.norm(w_dec.astype(np.float32), axis=-1)
    if not np.all(norms > 0):
        raise DictionaryError(
            f"{origin}: decoder column {int(np.argmin(norms))} is zero; "
            "sparsity_include_decoder_norm cannot normalize it"
        )
    return (
        (w_enc.astype(np.float32) * norms[None, :]).astype(w_enc.dtype),
        (b_enc.astype(np.float32) * norms).astype(b_enc.dtype),
        (w_dec.astype(np.float32) / norms[:, None]).astype(w_dec.dtype),
    )
