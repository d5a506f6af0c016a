"""circuit-tracer cross-layer transcoders (CLTs): whole (`mntss/clt-gemma-2-2b-2.5M`) or per
layer (sae_lens release `mntss-gemma-2-2b-2.5m-clt-as-per-layer`).

Layout (circuit-tracer `CrossLayerTranscoder.to_safetensors` / `load_clt`), one folder:
`config.yaml` (`model_kind: cross_layer_transcoder`, `feature_input_hook`, default
`hook_resid_mid`, `feature_output_hook`, default `hook_mlp_out`, `model_name`), and per layer
`l` of `n_layers`: `W_enc_{l}.safetensors` with `W_enc_{l} [d_transcoder, d_model]`,
`b_enc_{l} [d_transcoder]`, `b_dec_{l} [d_model]` (the bias added to the output of layer `l`)
and optionally `threshold_{l} [d_transcoder]`; `W_dec_{l}.safetensors` with
`W_dec_{l} [d_transcoder, n_layers - l, d_model]`, whose `[:, j - l]` is `d_{l->j}`, the vector
feature `i` of layer `l` writes into the MLP output of layer `j >= l`.

Features of layer `l`: `pre = x @ W_enc_l.T + b_enc_l` on the MLP block input of layer `l`;
JumpReLU `pre * (pre > threshold)` (circuit-tracer's, no ReLU) when thresholds are stored,
else ReLU. A CLT writes into every later MLP output. Loaded whole (`cross_layer=True`, the
default), layer `l` is a `CrossLayerTranscoder` named `clt-{width}` holding every `d_{l->j}`
(the lens sums their transports, docs/definitions.md section 1c). Loaded per layer
(`cross_layer=False`; sae_lens's registry lists it so), a dictionary here keeps only
`d_{l->l}` (the decoder of its own layer; the others are never read from disk) and `b_dec_l`, and its name says so: `clt-own-layer-{width}`.
(sae_lens's `mntss_clt_layer_transcoder` loader sums `d_{l->j}` over `j` instead, for
activations only; a sum of vectors written at different layers is no vector of one layer.)
"""

import dataclasses
import re
from pathlib import Path

import numpy as np

from qlens_jax.dictionaries import (
    Dictionary,
    DictionaryError,
    DictionaryInfo,
    cross_layer_transcoder,
    parse_hook_name,
    width_label,
)

from . import circuit_tracer
from .assemble import COMMON_OPTIONS, Claim, Options, build, expect_shape, resolve, to_jax
from .readers import TensorStore, check_values, read_safetensors, read_safetensors_slice, read_yaml
from .schema import Field, check_config

FORMAT = "clt"
OPTIONS = COMMON_OPTIONS | {"cross_layer"}
CONFIG_FILE = "config.yaml"
MODEL_KIND = "cross_layer_transcoder"
FILE_PATTERN = re.compile(r"^W_enc_(\d+)\.safetensors$")
NAME_PREFIX = "clt-own-layer"
CROSS_LAYER_PREFIX = "clt"
SCHEMA = (
    Field("model_kind", "str"),
    Field("feature_input_hook", "str"),
    Field("feature_output_hook", "str"),
    Field("model_name", "str"),
)


def is_clt_dir(path: Path) -> bool:
    return path.is_dir() and any(FILE_PATTERN.match(p.name) for p in path.iterdir())


def layer_files(path: Path) -> list[Path]:
    """The per-layer encoder files of a CLT folder, by layer."""
    return circuit_tracer.layer_files(path, FILE_PATTERN)


def _encoder_file(path: Path, opts: Options) -> Path:
    if path.is_file():
        return path
    if opts.layer is None:
        raise DictionaryError(
            f"{path}: a cross-layer transcoder has one encoder per layer; pass "
            "layer=... (or use load_dictionaries for every layer)"
        )
    file = path / f"W_enc_{opts.layer}.safetensors"
    if not file.is_file():
        raise DictionaryError(f"{path}: no {file.name} here")
    return file


def load(path: Path, opts: Options) -> Dictionary:
    """Read layer `l` of a CLT: its `W_enc_{l}.safetensors` file, or the folder with `layer=`;
    a `CrossLayerTranscoder` unless `opts.cross_layer` is False (then its own layer only)."""
    path = _encoder_file(path, opts)
    file_layer = int(FILE_PATTERN.match(path.name).group(1))
    cfg_path = path.parent / CONFIG_FILE
    cfg = check_config(read_yaml(cfg_path), SCHEMA, str(cfg_path)) if cfg_path.is_file() else {}
    if (cfg.get("model_kind") or MODEL_KIND) != MODEL_KIND:  # YAML null counts as absent
        raise DictionaryError(
            f"{cfg_path}: model_kind {cfg['model_kind']!r}, but W_enc_*.safetensors files are a {MODEL_KIND}"
        )
    hook_in = circuit_tracer.hook_name(cfg.get("feature_input_hook") or "hook_resid_mid", file_layer)
    hook_out = circuit_tracer.hook_name(cfg.get("feature_output_hook") or "hook_mlp_out", file_layer)
    origin = str(path)
    claims = [
        Claim(file_layer, None, f"the file name {path.name!r}"),
        Claim(*parse_hook_name(hook_in), f"feature_input_hook {hook_in!r}"),
    ]
    layer, site_in = resolve(claims, layer=opts.layer, site=opts.site, origin=origin)
    _, site_out = resolve(
        [Claim(*parse_hook_name(hook_out), f"feature_output_hook {hook_out!r}")], layer=layer, site=None, origin=origin
    )

    store = TensorStore(read_safetensors(path), origin)
    b_enc, b_dec = store.take(f"b_enc_{layer}"), store.take(f"b_dec_{layer}")
    d_sae, d_model = b_enc.shape[0], b_dec.shape[0]
    arrays = {
        "W_enc": expect_shape(
            store.take(f"W_enc_{layer}"),
            (d_sae, d_model),
            origin=origin,
            key=f"W_enc_{layer}",
            axes="[d_transcoder, d_model]",
        ).T,
        "b_enc": b_enc,
        "b_dec": b_dec,
    }
    activation = "relu"
    if store.has(f"threshold_{layer}"):
        activation = "jumprelu"
        arrays["threshold"] = expect_shape(
            store.take(f"threshold_{layer}"), (d_sae,), origin=origin, key=f"threshold_{layer}", axes="[d_transcoder]"
        )
    store.finish()
    decoder_file = path.with_name(f"W_dec_{layer}.safetensors")
    decoders = all_decoders(decoder_file, layer, d_sae, d_model, opts) if opts.cross_layer else None
    arrays["W_dec"] = (
        decoders[:, 0].copy() if decoders is not None else own_decoder(decoder_file, layer, d_sae, d_model, opts)
    )
    info = DictionaryInfo(
        format=FORMAT,
        source=origin,
        architecture="clt_own_layer",
        model_name=cfg.get("model_name"),
        hook_name=hook_in,
        hook_name_out=hook_out,
    )
    if opts.name is None:
        prefix = CROSS_LAYER_PREFIX if opts.cross_layer else NAME_PREFIX
        opts = dataclasses.replace(opts, name=f"{prefix}-{width_label(d_sae)}")
    if decoders is not None:
        info = dataclasses.replace(info, architecture="clt")
    own_layer = build(
        opts,
        arrays=arrays,
        layer=layer,
        site_in=site_in,
        site_out=site_out,
        kind="transcoder",
        activation=activation,
        info=info,
        rectify=False,
    )
    if decoders is None:
        return own_layer
    return cross_layer_transcoder(own_layer, to_jax(decoders, opts.dtype))


def own_decoder(path: Path, layer: int, d_sae: int, d_model: int, opts: Options) -> np.ndarray:
    """`d_{l->l}`, `[d_transcoder, d_model]`, read alone from `W_dec_{l}`; the number of layers
    it writes to must reach the model's last layer."""
    key = f"W_dec_{layer}"
    part, shape = read_safetensors_slice(path, key, (slice(None), slice(0, 1), slice(None)))
    _check_decoder_shape(path, key, shape, layer, d_sae, d_model, opts)
    decoder = part[:, 0]
    check_values(decoder, str(path), key)
    return decoder


def all_decoders(path: Path, layer: int, d_sae: int, d_model: int, opts: Options) -> np.ndarray:
    """Every `d_{l->j}` of layer `l`: `W_dec_{l}` whole, `[d_transcoder, n_layers - l, d_model]`."""
    key = f"W_dec_{layer}"
    store = TensorStore(read_safetensors(path), str(path))
    decoders = store.take(key)
    store.finish()
    _check_decoder_shape(path, key, list(decoders.shape), layer, d_sae, d_model, opts)
    check_values(decoders, str(path), key)
    return decoders


def _check_decoder_shape(
    path: Path, key: str, shape: list[int], layer: int, d_sae: int, d_model: int, opts: Options
) -> None:
    """A decoder of `[d_transcoder, n_layers - l, d_model]` whose writes end at the model's last layer."""
    n_written = shape[1] if len(shape) == 3 else -1
    if len(shape) != 3 or shape[0] != d_sae or shape[2] != d_model:
        raise DictionaryError(
            f"{path}: key {key!r} has shape {tuple(shape)}, expected "
            f"[d_transcoder, n_layers - {layer}, d_model] = ({d_sae}, ., {d_model})"
        )
    if opts.model is not None and layer + n_written != opts.model.n_layers:
        raise DictionaryError(
            f"{path}: {key!r} writes to {n_written} layers from layer {layer}, so the "
            f"transcoder spans {layer + n_written} layers, but the model has "
            f"{opts.model.n_layers}"
        )
