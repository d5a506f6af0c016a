"""Registry release ids: `(release, sae_id)` from sae_lens's `pretrained_saes.yaml` -> a Dictionary.

`load_dictionary("gemma-scope-2b-pt-res-canonical", model, sae_id="layer_12/width_16k/canonical")`,
or the one string `"RELEASE:SAE_ID"` (what `--dictionary` takes). sae_lens's registry
(its `pretrained_saes.yaml`, read as `sae_lens.loading.pretrained_saes_directory` reads it,
without importing sae_lens) gives the Hugging Face repository, the path
inside it, the loader (`conversion_func`), config overrides, the Neuronpedia id and, for some
releases, an input scale (`norm_scaling_factor`).

Two routes, both offline-capable through the Hugging Face cache (`HF_HUB_OFFLINE=1`):
- `NATIVE`: loaders whose files a converter of this package reads (Gemma Scope 1 and 2, Llama
  Scope, Qwen-Scope, sparsify, circuit-tracer transcoders and CLTs, dictionary_learning,
  Goodfire, DeepSeek-R1-distill, Kissane et al. `hook_z`): the files are fetched and converted
  natively (the owners' formulas, no header requests over HTTP, a CLT's own-layer decoder).
- every other loader (sae_lens's own folders, `llama_scope_r1_distill`, and any loader a newer
  sae_lens adds): sae_lens's loader function reads the files and its config and state dict
  are converted as a sae_lens SAE is (`saelens.from_parts`), with the registry's overrides
  and input scale applied as sae_lens's `from_pretrained` applies them.
"""

import dataclasses
import difflib
import functools
import importlib.util
from pathlib import Path
from typing import Any

from qlens_jax.dictionaries import Dictionary, DictionaryError

from . import hub, saelens
from .assemble import Options
from .readers import torch_to_numpy
from .schema import Field, check_config

SEPARATOR = ":"
# sae_lens loader -> fetched and converted natively (these releases have no config_overrides).
NATIVE = frozenset(
    {
        "gemma_2",
        "gemma_2_transcoder",
        "gemma_3",
        "llama_scope",
        "qwen_scope",
        "sparsify",
        "mwhanna_transcoder",
        "mntss_clt_layer_transcoder",
        "dictionary_learning_1",
        "goodfire",
        "deepseek_r1",
        "connor_rob_hook_z",
    }
)
INSTALL = "pip install sae-lens"
UNSUPPORTED_LOADERS = {"temporal": saelens.UNSUPPORTED["temporal"]}
RELEASE_SCHEMA = (
    Field("repo_id", "str", True),
    Field("conversion_func", "str"),
    Field("model", "str"),
    Field("config_overrides", "dict"),
    Field("saes", "list"),
)
SAE_SCHEMA = (
    Field("id", "str|int", True),
    Field("path", "str|int", True),
    Field("neuronpedia", "str"),
    Field("norm_scaling_factor", "float"),
)
# config_overrides replace keys of a sae_lens config: typed as in one, none of them required
OVERRIDE_SCHEMA = tuple(dataclasses.replace(field, required=False) for field in saelens.SCHEMA)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One dictionary of the registry."""

    release: str
    sae_id: str
    repo_id: str
    path: str
    conversion_func: str | None
    neuronpedia_id: str | None
    norm_scaling_factor: float | None
    config_overrides: dict | None
    model: str | None

    @property
    def id(self) -> str:
        return f"{self.release}{SEPARATOR}{self.sae_id}"


def parse(source: Any) -> tuple[str, str] | None:
    """`"RELEASE:SAE_ID"` -> (release, sae_id); None for anything else (a local path that
    exists, a Hub id `org/repo/...`, a URL)."""
    if not isinstance(source, str) or SEPARATOR not in source or "://" in source:
        return None
    release, sae_id = source.split(SEPARATOR, 1)
    if (
        not release
        or not sae_id
        or "/" in release
        or "\\" in release
        or sae_id.startswith(("/", "\\"))
        or Path(source).expanduser().exists()
    ):  # a path, or a Windows drive `C:\\...`
        return None
    return release, sae_id


def _registry_file() -> Path:
    """sae_lens's `pretrained_saes.yaml`, found without importing sae_lens (whose import pulls
    in TransformerLens and takes tens of seconds; only the sae_lens-loader route needs it)."""
    spec = importlib.util.find_spec("sae_lens")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise DictionaryError(
            f"registry release ids need sae_lens to resolve them: `{INSTALL}`, or pass the "
            "dictionary's local folder or file instead"
        )
    path = Path(folders[0]) / "pretrained_saes.yaml"
    if not path.is_file():
        raise DictionaryError(
            f"this sae_lens has no registry file {path.name}; `{INSTALL} --upgrade`, "
            "or pass the dictionary's local folder or file instead"
        )
    return path


@functools.cache
def _parse(path: Path) -> dict:
    import yaml

    with open(path) as f:  # the C loader is ~5x faster on this 14k-entry file, when PyYAML has it
        return yaml.load(f, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def _close(name: str, known, what: str) -> str:
    matches = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f"; close {what}: {', '.join(matches)}" if matches else ""


def lookup(release: str, sae_id: str) -> Entry:
    """The registry entry of `(release, sae_id)`, read as sae_lens's
    `get_pretrained_saes_directory` reads it; an error naming an unknown release or id (with
    close matches). Reads only sae_lens's registry file."""
    path = _registry_file()
    directory = _parse(path)
    if release not in directory:
        raise DictionaryError(
            f"unknown sae_lens release {release!r} (sae_lens registry: "
            f"{len(directory)} releases){_close(release, directory, 'releases')}"
        )
    info = _checked_release(directory[release], f"{path} release {release!r}")
    saes = {str(sae["id"]): sae for sae in info.get("saes") or []}
    if sae_id not in saes:
        raise DictionaryError(
            f"release {release!r} has no SAE id {sae_id!r} ({len(saes)} ids){_close(sae_id, saes, 'ids')}"
        )
    sae = saes[sae_id]
    if info.get("conversion_func") in UNSUPPORTED_LOADERS:
        raise DictionaryError(
            f"{release}{SEPARATOR}{sae_id}: {info['conversion_func']} dictionaries are "
            f"not supported: {UNSUPPORTED_LOADERS[info['conversion_func']]}"
        )
    return Entry(
        release=release,
        sae_id=sae_id,
        repo_id=info["repo_id"],
        path=str(sae["path"]),
        conversion_func=info.get("conversion_func"),
        neuronpedia_id=sae.get("neuronpedia"),
        norm_scaling_factor=sae.get("norm_scaling_factor"),
        config_overrides=info.get("config_overrides"),
        model=info.get("model"),
    )


def _checked_release(info: Any, origin: str) -> dict:
    """A release's registry entry with its fields, each of its SAEs' fields and its config
    overrides typed (`DictionaryError` naming the registry file, the release and the field)."""
    if not isinstance(info, dict):
        raise DictionaryError(f"{origin}: must be a mapping, got {type(info).__name__}")
    info = check_config(info, RELEASE_SCHEMA, origin, what="registry key")
    saes = []
    for number, sae in enumerate(info.get("saes") or []):
        where = f"{origin} SAE #{number}"
        if not isinstance(sae, dict):
            raise DictionaryError(f"{where}: must be a mapping, got {type(sae).__name__}")
        saes.append(check_config(sae, SAE_SCHEMA, where, what="registry key"))
    if info.get("config_overrides") is not None:
        check_config(info["config_overrides"], OVERRIDE_SCHEMA, origin, what="config override")
    return {**info, "saes": saes}


def release_hint(name: str) -> str:
    """For a bare release name given as a source: how to name one of its dictionaries
    (empty when `name` is no release, or sae_lens is not installed)."""
    try:
        path = _registry_file()
        info = _parse(path).get(name)
        saes = _checked_release(info, f"{path} release {name!r}")["saes"] if info is not None else []
    except DictionaryError:
        return ""
    if not saes:
        return ""
    return (
        f"; {name!r} is a sae_lens registry release of {len(saes)} dictionaries: name one as "
        f"'{name}{SEPARATOR}SAE_ID', e.g. '{name}{SEPARATOR}{saes[0]['id']}'"
    )


def _where(entry: Entry) -> str:
    return f"{entry.id} ({entry.repo_id}, {entry.path})"


def _not_found(entry: Entry, err: Exception) -> DictionaryError:
    """One line: what failed and which local path to pass instead."""
    from huggingface_hub import constants

    first_line = (str(err).strip().splitlines() or [""])[0][:200]
    offline = " with HF_HUB_OFFLINE set" if constants.is_offline_mode() else ""
    return DictionaryError(
        f"{_where(entry)}: not in the Hugging Face cache and not downloadable{offline} "
        f"({type(err).__name__}: {first_line}); download it on a connected machine "
        f"(`hf download {entry.repo_id} --include '{entry.path}*' --local-dir DIR`) and pass "
        f"the local path DIR/{entry.path}"
    )


def load(entry: Entry, opts: Options, *, load_local, revision=None, cache_dir=None) -> Dictionary:
    """The dictionary of `entry`; `load_local(path, **options)` is `api.load_dictionary`."""
    if entry.conversion_func in NATIVE:
        d = _load_native(entry, opts, load_local, revision, cache_dir)
    else:
        d = _load_through_sae_lens(entry, opts)
    info = dataclasses.replace(
        d.info,
        source=entry.id,
        neuronpedia_id=d.info.neuronpedia_id or entry.neuronpedia_id,
        model_name=d.info.model_name or entry.model,
    )
    return dataclasses.replace(d, info=info)


def _load_native(entry: Entry, opts: Options, load_local, revision, cache_dir) -> Dictionary:
    if entry.config_overrides:
        raise DictionaryError(
            f"{_where(entry)}: the registry overrides {sorted(entry.config_overrides)} "
            f"of a {entry.conversion_func} dictionary; not supported"
        )
    layer = int(entry.path) if entry.path.isdigit() else None  # a CLT's layer
    inside = None if layer is not None else entry.path
    try:
        local = hub.fetch(entry.repo_id, inside, revision=revision, cache_dir=cache_dir, layer=layer)
    except DictionaryError as err:
        raise _not_found(entry, err) from None
    options = {f.name: getattr(opts, f.name) for f in dataclasses.fields(Options) if f.name in opts.given()}
    if layer is not None:
        options["layer"] = layer
    if entry.conversion_func == "mntss_clt_layer_transcoder":
        options["cross_layer"] = False  # the release lists it per layer
    return load_local(local, opts.model, **options)


def _load_through_sae_lens(entry: Entry, opts: Options) -> Dictionary:
    from sae_lens.loading.pretrained_sae_loaders import NAMED_PRETRAINED_SAE_LOADERS
    from sae_lens.loading.pretrained_saes_directory import get_config_overrides

    name = entry.conversion_func or "sae_lens"
    if name not in NAMED_PRETRAINED_SAE_LOADERS:
        raise DictionaryError(f"{_where(entry)}: this sae_lens has no loader {name!r}")
    try:
        cfg, state, log_sparsity = NAMED_PRETRAINED_SAE_LOADERS[name](
            entry.repo_id,
            entry.path,
            device="cpu",
            force_download=False,
            cfg_overrides=get_config_overrides(entry.release, entry.sae_id),
        )
    except Exception as err:  # offline, not in the cache, gated, ... (huggingface_hub, OSError)
        raise _not_found(entry, err) from None
    tensors = {key: torch_to_numpy(value) for key, value in state.items()}
    cfg_origin = f"{entry.id} config ({name} loader)"
    normalized = saelens.normalize_config(check_config(cfg, saelens.SCHEMA, cfg_origin), cfg_origin)
    if (
        normalized.get("normalize_activations") == "expected_average_only_in"
        and opts.norm_scaling_factor is None
        and entry.norm_scaling_factor is not None
    ):
        opts = dataclasses.replace(opts, norm_scaling_factor=float(entry.norm_scaling_factor))
    return saelens.from_parts(
        cfg,
        tensors,
        opts,
        source=entry.id,
        cfg_origin=cfg_origin,
        weights_origin=f"{entry.id} weights ({name} loader)",
        log_sparsity=None if log_sparsity is None else torch_to_numpy(log_sparsity),
    )
