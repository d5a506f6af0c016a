"""SAELens dictionaries: a folder with `cfg.json` + `sae_weights.safetensors` (+ optional
`sparsity.safetensors`), or a sae_lens `SAE` / `TrainingSAE` object in memory.

Covers every architecture the pinned sae_lens (6.54) registers whose encoder is one linear
map: standard, gated, jumprelu, topk, abstopk, transcoder, skip_transcoder,
jumprelu_transcoder, jumprelu_skip_transcoder, and training checkpoints of batchtopk /
matryoshka_batchtopk (converted to JumpReLU exactly as sae_lens's `save_inference_model` does).
`temporal` and `matching_pursuit` are refused with the reason. SAEs may sit on any site of
`qlens_jax.dictionaries.SAE_SITES`; an `attn.hook_z` SAE (`reshape_activations: hook_z` or
not) reads the heads' outputs flattened in TransformerLens order, `[..., n_heads * d_head]`,
which is what sae_lens's `hook_z` reshaping feeds its encoder. Pre-6.0 flat configs are
translated as sae_lens's `handle_pre_6_0_config` does, except that anything sae_lens would
silently drop (a non-ReLU `activation_fn`, for instance) is an error here.
"""

import re
from pathlib import Path
from typing import Any

import numpy as np

from qlens_jax.dictionaries import Dictionary, DictionaryError, DictionaryInfo, parse_hook_name

from .assemble import COMMON_OPTIONS, Claim, Options, build, expect_shape, require, resolve
from .readers import TensorStore, read_json, read_safetensors, torch_to_numpy
from .schema import Field, check_config

FORMAT = "saelens"
OPTIONS = COMMON_OPTIONS | {"norm_scaling_factor", "fold_norm_scaling_factor"}
CFG_FILE, WEIGHTS_FILE, SPARSITY_FILE = "cfg.json", "sae_weights.safetensors", "sparsity.safetensors"

# architecture -> (kind, activation, has W_skip)
ARCHITECTURES = {
    "standard": ("sae", "relu", False),
    "gated": ("sae", "gated", False),
    "jumprelu": ("sae", "jumprelu", False),
    "topk": ("sae", "topk", False),
    "abstopk": ("sae", "abstopk", False),
    "batchtopk": ("sae", "batchtopk", False),
    "matryoshka_batchtopk": ("sae", "batchtopk", False),
    "transcoder": ("transcoder", "relu", False),
    "skip_transcoder": ("transcoder", "relu", True),
    "jumprelu_transcoder": ("transcoder", "jumprelu", False),
    "jumprelu_skip_transcoder": ("transcoder", "jumprelu", True),
}
UNSUPPORTED = {
    "temporal": "its codes attend over earlier tokens (a per-sequence encoder, not W_enc x + b)",
    "matching_pursuit": "its encoder is an iterative pursuit over W_dec (no encoder matrix)",
}
_HOOKS = ("hook_name", "hf_hook_name", "hook_name_out", "hf_hook_name_out", "model_name", "neuronpedia_id")
# The fields this converter reads, in both config generations (pre-6.0 names at the top level).
SCHEMA = (
    Field("architecture", "str"),
    Field("d_in", "int", True, 1),
    Field("d_sae", "int", True, 1),
    Field("d_out", "int", minimum=1),
    Field("k", "int", minimum=1),
    Field("apply_b_dec_to_input", "bool"),
    Field("rescale_acts_by_decoder_norm", "bool"),
    Field("normalize_activations", "str|bool"),
    Field("reshape_activations", "str"),
    Field("hook_layer", "int", minimum=0),
    Field("hook_point_layer", "int", minimum=0),
    Field("hook_point", "str"),
    Field("hook_head_index", "int"),
    Field("hook_point_head_index", "int"),
    Field("activation_fn", "str"),
    Field("activation_fn_str", "str"),
    Field("activation_fn_kwargs", "dict"),
    Field("activation_fn_kwargs.k", "int", minimum=1),
    Field("sae_lens_version", "str|float"),
    *(Field(key, "str") for key in _HOOKS),
    Field("metadata", "dict"),
    Field("metadata.sae_lens_version", "str|float"),
    Field("metadata.hook_head_index", "int"),
    *(Field(f"metadata.{key}", "str") for key in _HOOKS),
)
# Metadata keys of pre-6.0 flat configs (sae_lens LLM_METADATA_KEYS).
_METADATA_KEYS = {
    "model_name",
    "hook_name",
    "model_class_name",
    "hook_head_index",
    "model_from_pretrained_kwargs",
    "prepend_bos",
    "exclude_special_tokens",
    "neuronpedia_id",
    "context_size",
    "seqpos_slice",
    "dataset_path",
    "sae_lens_version",
    "sae_lens_training_version",
    "hook_name_out",
    "hook_head_index_out",
    "hf_hook_name",
    "hf_hook_name_out",
}


def is_saelens_dir(path: Path) -> bool:
    return (path / CFG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def load_dir(path: Path, opts: Options) -> Dictionary:
    """Read a sae_lens folder."""
    cfg = check_config(read_json(path / CFG_FILE), SCHEMA, str(path / CFG_FILE))  # before any weights
    tensors = read_safetensors(path / WEIGHTS_FILE)
    log_sparsity = None
    if (path / SPARSITY_FILE).is_file():
        store = TensorStore(read_safetensors(path / SPARSITY_FILE), str(path / SPARSITY_FILE))
        log_sparsity = store.take("sparsity", finite=False)  # log10 density: -inf for dead features
        store.finish()
    return from_parts(
        cfg,
        tensors,
        opts,
        source=str(path),
        cfg_origin=str(path / CFG_FILE),
        weights_origin=str(path / WEIGHTS_FILE),
        log_sparsity=log_sparsity,
    )


def is_sae_object(obj: Any) -> bool:
    """A sae_lens SAE in memory: has `cfg.to_dict()` and `state_dict()` (no sae_lens import)."""
    return hasattr(obj, "state_dict") and hasattr(getattr(obj, "cfg", None), "to_dict")


def load_object(sae: Any, opts: Options) -> Dictionary:
    """Convert a sae_lens SAE object (inference or training class)."""
    where = f"<{type(sae).__name__} object>"
    cfg = sae.cfg.to_dict()
    tensors = {k: torch_to_numpy(v) for k, v in sae.state_dict().items()}
    return from_parts(
        cfg, tensors, opts, source=where, cfg_origin=f"{where}.cfg", weights_origin=f"{where}.state_dict()"
    )


# ---- config -------------------------------------------------------------------------------
def _is_pre_6(cfg: dict) -> bool:
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version")
    if not version:
        return True  # sae_lens treats a config without a version as pre-6.0
    m = re.match(r"\s*(\d+)", str(version))
    return m is None or int(m.group(1)) < 6


def normalize_config(cfg: dict, origin: str) -> dict:
    """A v6-shaped config (`architecture`, `metadata`, ...) from either config generation."""
    if not _is_pre_6(cfg):
        return {**cfg, "metadata": dict(cfg.get("metadata") or {})}
    renames = {
        "hook_point": "hook_name",
        "hook_point_head_index": "hook_head_index",
        "activation_fn_str": "activation_fn",
    }
    old = {renames.get(k, k): v for k, v in cfg.items()}
    new = {k: v for k, v in old.items() if k not in _METADATA_KEYS}
    new["metadata"] = {k: v for k, v in old.items() if k in _METADATA_KEYS}
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("architecture", "standard")
    activation_fn = old.get("activation_fn") or "relu"
    kwargs = old.get("activation_fn_kwargs") or {}
    if activation_fn == "topk" and kwargs.get("k") is not None:
        new["architecture"], new["k"] = "topk", kwargs["k"]
    elif activation_fn != "relu":
        raise DictionaryError(
            f"{origin}: pre-6.0 activation_fn {activation_fn!r} (kwargs {kwargs}) is not "
            "supported; sae_lens 6 would silently load it as ReLU"
        )
    norm = new.get("normalize_activations")
    if isinstance(norm, bool):
        new["normalize_activations"] = "expected_average_only_in" if norm else "none"
    elif norm is None:
        new["normalize_activations"] = "none"
    return new


# ---- weights ------------------------------------------------------------------------------
def _fold_decoder_norms(w_enc, b_enc, w_dec):
    """sae_lens `_fold_norm_topk`: unit-norm decoder rows, norms moved into the encoder."""
    norms = np.maximum(np.linalg.norm(w_dec.astype(np.float32), axis=-1), 1e-8)
    return (
        (w_enc.astype(np.float32) * norms[None, :]).astype(w_enc.dtype),
        (b_enc.astype(np.float32) * norms).astype(b_enc.dtype),
        (w_dec.astype(np.float32) / norms[:, None]).astype(w_dec.dtype),
    )


def _refuse_attn_out_or_z(claims: list[Claim], d_in: int, origin: str) -> None:
    """Older sae_lens conversions of Gemma Scope 2 'attn_out' SAEs name the o_proj input (z)
    `hook_attn_out`: with both hooks recorded, the file contradicts itself about the site."""
    by_site = {c.site: c for c in claims if c.site is not None}
    if "attn_out" in by_site and "z" in by_site:
        raise DictionaryError(
            f"{origin}: cannot place this dictionary unambiguously: {by_site['attn_out'].evidence} "
            f"says attn_out (the attention output, width d_model) but {by_site['z'].evidence} says "
            f"z (the heads' outputs before the output projection, width n_heads x head_dim); its "
            f"width is d_in={d_in}. Older sae_lens conversions of Gemma Scope 2 'attn_out' SAEs, "
            "which read the o_proj input, are labelled so: if it reads the o_proj input, name its "
            "hook_name 'blocks.L.attn.hook_z'"
        )


def _placement(cfg: dict, meta: dict, kind: str, opts: Options, origin: str, d_in: int) -> tuple[int, str, str]:
    claims_in, claims_out = [], []
    for key, bucket in (
        ("hook_name", claims_in),
        ("hf_hook_name", claims_in),
        ("hook_name_out", claims_out),
        ("hf_hook_name_out", claims_out),
    ):
        hook = meta.get(key)
        if hook:
            layer, site = parse_hook_name(hook, opts.model_type)
            bucket.append(Claim(layer, site, f"{key} {hook!r}"))
    _refuse_attn_out_or_z(claims_in, d_in, origin)
    for key in ("hook_layer", "hook_point_layer"):
        if cfg.get(key) is not None:
            claims_in.append(Claim(int(cfg[key]), None, f"{key} {cfg[key]}"))
    if meta.get("hook_head_index") is not None:
        raise DictionaryError(
            f"{origin}: per-head dictionaries (hook_head_index={meta['hook_head_index']}) are not supported"
        )
    layer, site_in = resolve(claims_in, layer=opts.layer, site=opts.site, origin=origin)
    if kind == "sae":
        site_out = site_in
    else:
        _, site_out = resolve(
            claims_out + [Claim(layer, None, "the input hook's layer")],
            layer=None,
            site=None if claims_out else "mlp_out",
            origin=origin,
        )
    return layer, site_in, site_out


def from_parts(
    cfg: dict,
    tensors: dict[str, np.ndarray],
    opts: Options,
    *,
    source: str,
    cfg_origin: str,
    weights_origin: str,
    log_sparsity=None,
) -> Dictionary:
    """Build a Dictionary from a sae_lens config dict and its state dict."""
    cfg = normalize_config(check_config(cfg, SCHEMA, cfg_origin), cfg_origin)
    meta = cfg["metadata"]
    arch = require(cfg, "architecture", cfg_origin)
    if arch in UNSUPPORTED:
        raise DictionaryError(f"{cfg_origin}: architecture {arch!r} is not supported: {UNSUPPORTED[arch]}")
    if arch not in ARCHITECTURES:
        raise DictionaryError(f"{cfg_origin}: unknown architecture {arch!r}; supported: {sorted(ARCHITECTURES)}")
    kind, activation, has_skip = ARCHITECTURES[arch]
    reshape = cfg.get("reshape_activations") or "none"
    if reshape not in ("none", "hook_z"):
        raise DictionaryError(
            f"{cfg_origin}: unknown reshape_activations={reshape!r} (sae_lens knows 'none' and 'hook_z')"
        )
    d_in, d_sae = int(require(cfg, "d_in", cfg_origin)), int(require(cfg, "d_sae", cfg_origin))
    d_out = int(require(cfg, "d_out", cfg_origin)) if kind == "transcoder" else d_in
    apply_b_dec = bool(cfg.get("apply_b_dec_to_input", True))
    if kind == "transcoder" and apply_b_dec:
        raise DictionaryError(
            f"{cfg_origin}: apply_b_dec_to_input is not supported for transcoders (sae_lens refuses it too)"
        )

    store = TensorStore(tensors, weights_origin)
    w = {
        "W_enc": expect_shape(
            store.take("W_enc"), (d_in, d_sae), origin=weights_origin, key="W_enc", axes="[d_in, d_sae]"
        ),
        "W_dec": expect_shape(
            store.take("W_dec"), (d_sae, d_out), origin=weights_origin, key="W_dec", axes="[d_sae, d_out]"
        ),
        "b_dec": expect_shape(store.take("b_dec"), (d_out,), origin=weights_origin, key="b_dec", axes="[d_out]"),
    }
    bias_key = "b_gate" if activation == "gated" else "b_enc"
    w["b_enc"] = expect_shape(store.take(bias_key), (d_sae,), origin=weights_origin, key=bias_key, axes="[d_sae]")
    k, rescale = None, bool(cfg.get("rescale_acts_by_decoder_norm", False))
    if activation == "gated":
        for key in ("b_mag", "r_mag"):
            w[key] = expect_shape(store.take(key), (d_sae,), origin=weights_origin, key=key, axes="[d_sae]")
    elif activation == "jumprelu":
        if store.has("log_threshold"):  # older JumpReLU training checkpoints
            w["threshold"] = np.exp(store.take("log_threshold"))
        else:
            w["threshold"] = store.take("threshold")
        w["threshold"] = expect_shape(w["threshold"], (d_sae,), origin=weights_origin, key="threshold", axes="[d_sae]")
    elif activation in ("topk", "abstopk"):
        k = int(require(cfg, "k", cfg_origin))
    elif activation == "batchtopk":
        # A training checkpoint; sae_lens's save_inference_model turns it into JumpReLU with
        # the learned global threshold, after folding decoder norms when they were rescaled.
        threshold = float(store.take("topk_threshold"))
        if cfg.get("rescale_acts_by_decoder_norm", True):
            w["W_enc"], w["b_enc"], w["W_dec"] = _fold_decoder_norms(w["W_enc"], w["b_enc"], w["W_dec"])
        w["threshold"] = np.full((d_sae,), threshold, dtype=w["b_enc"].dtype)
        activation, rescale = "jumprelu", False
    if has_skip:
        w["W_skip"] = expect_shape(
            store.take("W_skip"), (d_out, d_in), origin=weights_origin, key="W_skip", axes="[d_out, d_in]"
        )
    if store.has("scaling_factor"):  # legacy; sae_lens drops it when all ones
        factor = store.take("scaling_factor")
        if not np.allclose(factor.astype(np.float32), 1.0):
            raise DictionaryError(
                f"{weights_origin}: a legacy finetuning 'scaling_factor' that is "
                "not all ones is not supported (sae_lens >= 6 cannot load it either)"
            )
    store.finish()
    if log_sparsity is not None:
        w["log_sparsity"] = expect_shape(log_sparsity, (d_sae,), origin=source, key="sparsity", axes="[d_sae]")

    norm = cfg.get("normalize_activations") or "none"
    input_norm, fold = norm, False
    if norm == "expected_average_only_in":
        if opts.norm_scaling_factor is None:
            raise DictionaryError(
                f"{cfg_origin}: normalize_activations='expected_average_only_in' scales inputs by a "
                "factor that is not stored in the file; pass norm_scaling_factor=... (the release's "
                "norm_scaling_factor in sae_lens's pretrained_saes.yaml, or "
                "qlens_jax.dictionaries.estimate_input_scale(activations)); 1.0 uses the weights "
                "as they are, which is what sae_lens's load_from_disk does"
            )
        input_norm, fold = "scale", opts.fold_norm_scaling_factor
        w["input_scale"] = np.asarray(opts.norm_scaling_factor, dtype=np.float32)
    elif norm not in ("none", "layer_norm", "constant_norm_rescale"):
        raise DictionaryError(
            f"{cfg_origin}: normalize_activations={norm!r} is not supported (its statistics are not in the file)"
        )
    elif opts.norm_scaling_factor is not None:
        raise DictionaryError(
            f"{cfg_origin}: norm_scaling_factor given but the config's normalize_activations is {norm!r}"
        )

    layer, site_in, site_out = _placement(cfg, meta, kind, opts, cfg_origin, d_in)
    if reshape == "hook_z" and site_in != "z":
        raise DictionaryError(
            f"{cfg_origin}: reshape_activations='hook_z' flattens the heads of "
            f"attn.hook_z, but the dictionary reads {site_in}"
        )
    info = DictionaryInfo(
        format=FORMAT,
        source=source,
        architecture=arch,
        model_name=meta.get("model_name"),
        hook_name=meta.get("hook_name"),
        hook_name_out=meta.get("hook_name_out"),
        hf_hook_name=meta.get("hf_hook_name"),
        hf_hook_name_out=meta.get("hf_hook_name_out"),
        neuronpedia_id=meta.get("neuronpedia_id"),
    )
    return build(
        opts,
        arrays=w,
        layer=layer,
        site_in=site_in,
        site_out=site_out,
        kind=kind,
        activation=activation,
        info=info,
        k=k,
        rectify=True,
        apply_b_dec_to_input=apply_b_dec,
        input_norm=input_norm,
        denormalize_output=(kind == "sae"),  # sae_lens transcoders don't
        rescale_acts_by_decoder_norm=rescale,
        fold_scale=fold,
    )
