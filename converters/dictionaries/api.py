"""`load_dictionary` and `load_dictionaries`: find the format of a source and convert it.

A source is a local file or folder, a sae_lens SAE object, or a Hugging Face Hub id
(`"org/repo/path/inside"`, or `"org/repo"` with `path=`). The format is detected from the
files (docs/dictionaries.md), never from a name alone, and can be forced with `format=`.
"""

import dataclasses
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from qlens_jax.dictionaries import Dictionary, DictionaryError, DictionarySet, model_facts

from . import (
    circuit_tracer,
    clt,
    deepseek_r1,
    dictionary_learning,
    gemma_scope,
    gemma_scope_2,
    goodfire,
    hook_z,
    hub,
    llama_scope,
    openai,
    qwen_scope,
    registry,
    saelens,
    sparsify,
)
from .assemble import Options
from .readers import torch_keys
from .schema import Field, check_config

CONVERTERS = {
    saelens.FORMAT: saelens,
    gemma_scope.FORMAT: gemma_scope,
    gemma_scope_2.FORMAT: gemma_scope_2,
    llama_scope.FORMAT: llama_scope,
    openai.FORMAT: openai,
    sparsify.FORMAT: sparsify,
    qwen_scope.FORMAT: qwen_scope,
    circuit_tracer.FORMAT: circuit_tracer,
    clt.FORMAT: clt,
    dictionary_learning.FORMAT: dictionary_learning,
    goodfire.FORMAT: goodfire,
    deepseek_r1.FORMAT: deepseek_r1,
    hook_z.FORMAT: hook_z,
}
_OPENAI_FILE = re.compile(r"^(\d+)\.pt$")
_LAYOUTS = (
    "sae_lens: cfg.json + sae_weights.safetensors; Gemma Scope: params.npz; Gemma Scope 2: "
    "config.json + params.safetensors; Llama Scope: hyperparams.json + "
    "checkpoints/final.safetensors; sparsify: cfg.json + sae.safetensors; Qwen-Scope: "
    "layer{n}.sae.pt; circuit-tracer: config.yaml + layer_{i}.safetensors; cross-layer transcoder: "
    "config.yaml + W_enc_{l}.safetensors + W_dec_{l}.safetensors; dictionary_learning: ae.pt + "
    "config.json; Kissane et al. hook_z: {run}.pt + {run}_cfg.json; Goodfire: *-SAE-l{L}.pth "
    "(encoder_linear, decoder_linear); DeepSeek-R1-distill: *-SAE-l{L}.pt (encoder, decoder); "
    "OpenAI: {layer}.pt"
)


def _torch_format(path: Path) -> str:
    """The format of a PyTorch file, from its name, its neighbours and its keys."""
    if hook_z.is_hook_z_file(path):
        return hook_z.FORMAT
    if path.name == dictionary_learning.WEIGHTS_FILE and dictionary_learning.is_dictionary_learning_dir(path.parent):
        return dictionary_learning.FORMAT
    keys = torch_keys(path)
    for converter in (goodfire, deepseek_r1):
        if keys == converter.KEYS:
            return converter.FORMAT
    if "pre_bias" in keys:
        return openai.FORMAT
    raise DictionaryError(
        f"{path}: a PyTorch file with keys {sorted(keys)[:12]}, which is none of "
        f"the layouts this package reads ({_LAYOUTS})"
    )


def detect(path: Path) -> str:
    """The format of a local file or folder holding one dictionary (or a per-layer set)."""
    if path.is_file():
        name = path.name
        if qwen_scope.FILE_PATTERN.match(name):
            return qwen_scope.FORMAT
        if circuit_tracer.FILE_PATTERN.match(name):
            return circuit_tracer.FORMAT
        if clt.FILE_PATTERN.match(name):
            return clt.FORMAT
        if name.endswith(".npz"):
            return gemma_scope.FORMAT
        if name.endswith((".pt", ".pth")):
            return _torch_format(path)
        raise DictionaryError(f"{path}: not a dictionary file this package reads ({_LAYOUTS})")
    if not path.is_dir():
        raise DictionaryError(f"{path}: no such file or directory")
    if saelens.is_saelens_dir(path):
        return saelens.FORMAT
    if sparsify.is_sparsify_dir(path):
        return sparsify.FORMAT
    if dictionary_learning.is_dictionary_learning_dir(path):
        return dictionary_learning.FORMAT
    if gemma_scope_2.is_gemma_scope_2_dir(path):
        return gemma_scope_2.FORMAT
    if (path / gemma_scope.PARAMS_FILE).is_file():
        return gemma_scope.FORMAT
    if llama_scope.is_llama_scope_dir(path):
        return llama_scope.FORMAT
    if clt.is_clt_dir(path):
        return clt.FORMAT
    if circuit_tracer.is_circuit_tracer_dir(path):
        return circuit_tracer.FORMAT
    names = sorted(p.name for p in path.iterdir())
    if "cfg.json" in names:
        raise DictionaryError(
            f"{path}: has cfg.json but neither sae_weights.safetensors (sae_lens) nor sae.safetensors (sparsify)"
        )
    if "config.json" in names and "params.safetensors" not in names:
        raise DictionaryError(f"{path}: has config.json but no params.safetensors (Gemma Scope 2)")
    if llama_scope.CONFIG_FILE in names:
        raise DictionaryError(f"{path}: has {llama_scope.CONFIG_FILE} but no {llama_scope.WEIGHTS_FILE} (Llama Scope)")
    raise DictionaryError(f"{path}: no dictionary found (contents: {names[:12]}); expected {_LAYOUTS}")


def _member_for_layer(path: Path, layer: int | None) -> Path:
    """A per-layer file of a folder of Qwen-Scope / OpenAI files, picked by `layer`."""
    if not path.is_dir() or layer is None:
        return path
    for candidate in (path / f"layer{layer}.sae.pt", path / f"{layer}.pt"):
        if candidate.is_file():
            return candidate
    return path


def set_members(path: Path) -> list[Path]:
    """The dictionaries inside a folder that holds several (per-layer files or one folder per
    dictionary), in natural order; empty when `path` is itself one dictionary."""
    if not path.is_dir():
        return []
    if circuit_tracer.is_circuit_tracer_dir(path):
        return circuit_tracer.layer_files(path)
    if clt.is_clt_dir(path):
        return clt.layer_files(path)
    try:
        detect(path)
        return []
    except DictionaryError:
        pass
    members = []
    for child in sorted(path.iterdir(), key=_natural):
        if child.is_file() and not (qwen_scope.FILE_PATTERN.match(child.name) or _OPENAI_FILE.match(child.name)):
            continue
        try:
            detect(child)
        except DictionaryError:
            continue
        members.append(child)
    return members


def _natural(p: Path) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name)]


def _local(source: str | Path, path: str | None, opts: Options, revision, cache_dir) -> Path:
    local = Path(source).expanduser()
    if local.exists():
        return local / path if path else local
    if isinstance(source, str) and (hub.looks_like_hub_id(source) or path is not None):
        return hub.fetch(source, path, revision=revision, cache_dir=cache_dir, layer=opts.layer)
    hint = registry.release_hint(source) if isinstance(source, str) else ""
    raise DictionaryError(f"{source}: no such file or directory (and not a Hub id 'org/repo/...'){hint}")


# The caller's options with a type (`dtype` is any dtype-like; `None` means not given).
OPTION_FIELDS = (
    Field("layer", "int", minimum=0),
    Field("site", "str"),
    Field("name", "str"),
    Field("k", "int", minimum=1),
    Field("norm_scaling_factor", "float"),
    Field("fold_norm_scaling_factor", "bool"),
    Field("cross_layer", "bool"),
)


def _options(model, options: dict[str, Any]) -> Options:
    known = {f.name for f in dataclasses.fields(Options)} - {"model"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown option(s) {sorted(unknown)}; known: {sorted(known)}")
    options = check_config(options, OPTION_FIELDS, "load_dictionary", what="option")
    return Options(**options, model=model_facts(model) if model is not None else None)


def load_dictionary(
    source: Any,
    model=None,
    *,
    path: str | None = None,
    format: str | None = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    sae_id: str | None = None,
    **options: Any,
) -> Dictionary:
    """Load one dictionary (SAE or transcoder) as a `qlens_jax.dictionaries.Dictionary`.

    Args:
      source: a local file or folder, a sae_lens SAE object, a Hub id
        `"org/repo[/path/inside]"`, or a sae_lens registry release (with `sae_id=`, or as one
        string `"RELEASE:SAE_ID"`; see `registry`).
      model: a `Transformer` or `ModelConfig` (anything with `d_model`, `n_layers`,
        `model_type`). When given, the dictionary is validated against it.
      path: a path inside `source` (Hub repo or local folder).
      format: force a format (one of `CONVERTERS`) instead of detecting it.
      revision, cache_dir: passed to huggingface_hub for Hub ids.
      sae_id: the SAE id inside the registry release `source`.
      **options: see `assemble.Options` (`layer`, `site`, `name`, `dtype`,
        `norm_scaling_factor`, `fold_norm_scaling_factor`, `k`, `cross_layer`); an option a format does not
        use is an error, not ignored.
    """
    opts = _options(model, options)
    registry_id = (source, sae_id) if sae_id is not None else registry.parse(source)
    if registry_id is not None:
        if not isinstance(registry_id[0], str) or path is not None or format is not None:
            raise DictionaryError(
                f"{source!r}: a registry release id takes a string release and "
                "sae_id=..., and neither path= nor format="
            )
        try:
            entry = registry.lookup(*registry_id)
        except DictionaryError as err:
            if sae_id is None:  # one string: it may have been meant as a local path
                raise DictionaryError(f"{err} (and no local path {source!r} exists)") from None
            raise
        return registry.load(entry, opts, load_local=load_dictionary, revision=revision, cache_dir=cache_dir)
    if saelens.is_sae_object(source):
        fmt, local = saelens.FORMAT, None
    else:
        local = _member_for_layer(_local(source, path, opts, revision, cache_dir), opts.layer)
        if local.is_file() and local.name in hub.FOLDER_FILES and local.name != "params.npz":
            local = local.parent  # a file of a one-dictionary folder: read the folder
        local = llama_scope.folder_of(local)
        fmt = format or detect(local)
    if fmt not in CONVERTERS:
        raise DictionaryError(f"unknown format {fmt!r}; known: {sorted(CONVERTERS)}")
    converter = CONVERTERS[fmt]
    extra = opts.given() - converter.OPTIONS
    if extra:
        raise DictionaryError(f"{source}: option(s) {sorted(extra)} do not apply to {fmt} dictionaries")
    if local is None:
        return saelens.load_object(source, opts)
    if fmt == saelens.FORMAT:
        return saelens.load_dir(local, opts)
    return converter.load(local, opts)


def load_dictionaries(sources: Any, model, **options: Any) -> DictionarySet:
    """Load several dictionaries as one `DictionarySet` validated against `model`.

    `sources` is one source or a list of them; an item may be `(source, {option: value})`
    for per-item options, and a registry id `"RELEASE:SAE_ID"`. A folder holding several dictionaries (a circuit-tracer transcoder
    set, a folder of Qwen-Scope or OpenAI per-layer files, a sparsify run, a folder of
    sae_lens folders) expands to all of them in natural order, unless `layer=` is given.
    """
    if isinstance(sources, (str, Path)) or saelens.is_sae_object(sources):
        sources = [sources]
    if not isinstance(sources, Iterable):
        raise TypeError(f"sources must be a source or a list of sources, got {type(sources).__name__}")
    loaded = []
    for item in sources:
        source, extra = (
            item if (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], dict)) else (item, {})
        )
        kwargs = {**options, **extra}
        members = []
        if (
            not saelens.is_sae_object(source)
            and kwargs.get("layer") is None
            and registry.parse(source) is None
            and "sae_id" not in kwargs
        ):
            hub_keys = ("path", "revision", "cache_dir")
            local = _local(
                source, kwargs.get("path"), _options(None, {}), kwargs.get("revision"), kwargs.get("cache_dir")
            )
            members = set_members(local)
            kwargs = {k: v for k, v in kwargs.items() if k not in hub_keys} if members else kwargs
        if members:
            loaded.extend(load_dictionary(m, model, **kwargs) for m in members)
        else:
            loaded.append(load_dictionary(source, model, **kwargs))
    return DictionarySet(loaded, model)
