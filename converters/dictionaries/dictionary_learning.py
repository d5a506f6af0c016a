"""dictionary_learning (saprmarks/dictionary_learning): a folder with `ae.pt` + `config.json`.

The SAEBench releases (Pythia-70m, Gemma-2-2B; `canrager/...`, `adamkarvonen/...`) and the
Marks et al. Pythia dictionaries, and `andyrdt`'s Llama / Qwen / gpt-oss SAEs. `config.json`
names the class under `trainer.dict_class` (older files: under `dictionary`), with
`activation_dim`, `dict_size`, `k`, `layer`, `lm_name`, `submodule_name`. `ae.pt` is the
class's `state_dict`; each class fixes its keys and their orientation:

| dict_class | keys | Dictionary |
|---|---|---|
| `AutoEncoder` | `bias`, `encoder.{weight,bias}`, `decoder.weight` | ReLU, `b_dec = bias` subtracted from the input |
| `AutoEncoderNew` | `encoder.{weight,bias}`, `decoder.{weight,bias}` | ReLU, nothing subtracted |
| `GatedAutoEncoder` | `decoder_bias`, `encoder.weight`, `gate_bias`, `mag_bias`, `r_mag`, `decoder.weight` | gated |
| `JumpReluAutoEncoder` | `W_enc`, `b_enc`, `W_dec`, `b_dec`, `threshold [d_sae]` | JumpReLU, nothing subtracted |
| `AutoEncoderTopK` | `encoder.{weight,bias}`, `decoder.weight`, `b_dec`, `k`, `threshold` | TopK (`relu` then top-k per token; its running `threshold` is a training statistic) |
| `BatchTopKSAE` | as `AutoEncoderTopK` | JumpReLU with the one learned `threshold` for every feature (its inference `encode`) |
| `MatryoshkaBatchTopKSAE` | `W_enc`, `b_enc`, `W_dec`, `b_dec`, `k`, `threshold`, `group_sizes` | as `BatchTopKSAE` |

`encoder.weight` is `[d_sae, d_in]` and `decoder.weight` `[d_in, d_sae]` (torch `Linear`).
Activations follow sae_lens's `dictionary_learning_1` loader; newer `GatedAutoEncoder` and
`JumpReluAutoEncoder` code reports its activations multiplied by the decoder column norms and
divides them out again before decoding, which leaves every reconstruction unchanged.

Placement: `trainer.layer`, and the site from the folder or `submodule_name`
(`resid_post_layer_12`, Marks et al.'s `resid_out_layer3`, `attn_out_layer3`, `mlp_out_layer3`);
the registry's `blocks.L.hook_resid_post` SAE ids are the residual stream. Embedding
dictionaries (`embed`) are refused.
"""

import os
import re
from pathlib import Path

import numpy as np

from qlens_jax.dictionaries import Dictionary, DictionaryError, DictionaryInfo

from .assemble import COMMON_OPTIONS, Claim, Options, build, expect_shape, require, resolve
from .readers import TensorStore, read_json, read_torch
from .schema import Field, check_config

FORMAT = "dictionary_learning"
OPTIONS = COMMON_OPTIONS
WEIGHTS_FILE, CONFIG_FILE = "ae.pt", "config.json"
DICT_CLASSES = (
    "AutoEncoder",
    "AutoEncoderNew",
    "GatedAutoEncoder",
    "JumpReluAutoEncoder",
    "AutoEncoderTopK",
    "BatchTopKSAE",
    "MatryoshkaBatchTopKSAE",
)
_SITES = {"resid_post": "resid_post", "resid_out": "resid_post", "attn_out": "attn_out", "mlp_out": "mlp_out"}
_SECTION_FIELDS = (
    Field("dict_class", "str"),
    Field("activation_dim", "int", minimum=1),
    Field("dict_size", "int", minimum=1),
    Field("k", "int", minimum=1),
    Field("layer", "int", minimum=0),
    Field("lm_name", "str"),
    Field("submodule_name", "str"),
)
SCHEMA = tuple(
    field
    for section in ("trainer", "dictionary")  # a section, then its fields
    for field in (
        Field(section, "dict"),
        *(Field(f"{section}.{f.name}", f.kind, minimum=f.minimum) for f in _SECTION_FIELDS),
    )
)
_SITE_IN_NAME = re.compile(r"(resid_post|resid_out|attn_out|mlp_out|embed)(?:_layer_?(\d+))?(?:/|$)")


def is_dictionary_learning_dir(path: Path) -> bool:
    return (path / WEIGHTS_FILE).is_file() and (path / CONFIG_FILE).is_file()


def _section(cfg: dict, origin: str) -> dict:
    """The part of config.json that describes the dictionary (`trainer`, or older `dictionary`)."""
    for key in ("trainer", "dictionary"):
        section = cfg.get(key)
        if isinstance(section, dict) and "dict_class" in section:
            return section
    raise DictionaryError(f"{origin}: no trainer.dict_class (dictionary_learning config.json)")


def _placement(section: dict, path: Path, opts: Options, origin: str) -> tuple[int, str]:
    claims = []
    if section.get("layer") is not None:
        claims.append(Claim(section["layer"], None, f"{CONFIG_FILE} trainer.layer {section['layer']}"))
    texts = [(f"the folder {path.name!r}", Path(os.path.abspath(path)).as_posix() + "/")]
    if section.get("submodule_name"):
        texts.append((f"{CONFIG_FILE} submodule_name {section['submodule_name']!r}", section["submodule_name"]))
    for evidence, text in texts:
        found = _SITE_IN_NAME.findall(text)
        if not found:
            continue
        site, layer = found[-1]
        if site == "embed":
            raise DictionaryError(f"{origin}: {evidence} says it reads the embedding, not a Query Lens site")
        claims.append(Claim(int(layer) if layer else None, _SITES[site], evidence))
    return resolve(claims, layer=opts.layer, site=opts.site, origin=origin)


def _scalar(store: TensorStore, key: str, origin: str) -> float:
    value = store.take(key)
    if value.size != 1:
        raise DictionaryError(f"{origin}: key {key!r} has shape {value.shape}, expected a scalar")
    return float(value.reshape(()))


def _stored_k(store: TensorStore, section: dict, origin: str) -> int:
    stored = _scalar(store, "k", origin)
    if not (stored.is_integer() and stored >= 1):  # never truncated into an integer
        raise DictionaryError(f"{origin}: key 'k' must hold one positive integer, got {stored:g}")
    k = int(stored)
    if section.get("k") is not None and section["k"] != k:
        raise DictionaryError(f"{origin}: ae.pt has k={k} but {CONFIG_FILE} says k={section['k']}")
    return k


def _arrays(
    dict_class: str, store: TensorStore, d_in: int, d_sae: int, section: dict, origin: str
) -> tuple[dict, str, int | None, bool]:
    """(arrays, activation, k, apply_b_dec_to_input) of one dictionary_learning class."""
    sizes = {"d_in": d_in, "d_sae": d_sae}

    def take(key, *axes):
        shape = tuple(sizes[a] for a in axes)
        return expect_shape(store.take(key), shape, origin=origin, key=key, axes=f"[{', '.join(axes)}]")

    if dict_class in ("JumpReluAutoEncoder", "MatryoshkaBatchTopKSAE"):
        w = {
            "W_enc": take("W_enc", "d_in", "d_sae"),
            "b_enc": take("b_enc", "d_sae"),
            "W_dec": take("W_dec", "d_sae", "d_in"),
            "b_dec": take("b_dec", "d_in"),
        }
    else:  # torch Linear layers: encoder.weight [d_sae, d_in], decoder.weight [d_in, d_sae]
        w = {"W_enc": take("encoder.weight", "d_sae", "d_in").T, "W_dec": take("decoder.weight", "d_in", "d_sae").T}
    if dict_class == "AutoEncoder":
        w.update(b_enc=take("encoder.bias", "d_sae"), b_dec=take("bias", "d_in"))
        return w, "relu", None, True
    if dict_class == "AutoEncoderNew":
        w.update(b_enc=take("encoder.bias", "d_sae"), b_dec=take("decoder.bias", "d_in"))
        return w, "relu", None, False
    if dict_class == "GatedAutoEncoder":
        w.update(
            b_enc=take("gate_bias", "d_sae"),
            b_mag=take("mag_bias", "d_sae"),
            r_mag=take("r_mag", "d_sae"),
            b_dec=take("decoder_bias", "d_in"),
        )
        return w, "gated", None, True
    if dict_class == "JumpReluAutoEncoder":
        w["threshold"] = take("threshold", "d_sae")
        return w, "jumprelu", None, False
    if dict_class != "MatryoshkaBatchTopKSAE":
        w.update(b_enc=take("encoder.bias", "d_sae"), b_dec=take("b_dec", "d_in"))
    k = _stored_k(store, section, origin)
    if dict_class == "AutoEncoderTopK":
        store.discard("threshold")  # a running training statistic; its encode is per-token top-k
        return w, "topk", k, True
    if dict_class == "MatryoshkaBatchTopKSAE":
        sizes = store.take("group_sizes")
        if int(sizes.sum()) != d_sae:
            raise DictionaryError(f"{origin}: group_sizes sum to {int(sizes.sum())}, not d_sae={d_sae}")
    threshold = _scalar(store, "threshold", origin)
    w["threshold"] = np.full((d_sae,), threshold, dtype=w["b_enc"].dtype)
    return w, "jumprelu", None, True


def load(path: Path, opts: Options) -> Dictionary:
    """Read a dictionary_learning folder (`ae.pt` + `config.json`)."""
    if path.is_file():
        path = path.parent
    cfg_origin, origin = str(path / CONFIG_FILE), str(path / WEIGHTS_FILE)
    section = _section(check_config(read_json(path / CONFIG_FILE), SCHEMA, cfg_origin), cfg_origin)
    dict_class = section["dict_class"]
    if dict_class not in DICT_CLASSES:
        raise DictionaryError(
            f"{cfg_origin}: dict_class {dict_class!r} is not supported; supported: {', '.join(DICT_CLASSES)}"
        )
    d_in = require(section, "activation_dim", cfg_origin)
    d_sae = require(section, "dict_size", cfg_origin)
    layer, site = _placement(section, path, opts, cfg_origin)
    store = TensorStore(read_torch(path / WEIGHTS_FILE), origin)
    arrays, activation, k, apply_b_dec = _arrays(dict_class, store, d_in, d_sae, section, origin)
    store.finish()
    info = DictionaryInfo(format=FORMAT, source=str(path), architecture=dict_class, model_name=section.get("lm_name"))
    return build(
        opts,
        arrays=arrays,
        layer=layer,
        site_in=site,
        site_out=site,
        kind="sae",
        activation=activation,
        info=info,
        k=k,
        rectify=True,
        apply_b_dec_to_input=apply_b_dec,
    )
