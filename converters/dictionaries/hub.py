"""Resolving `"org/repo"` (+ a path inside it) to local files through huggingface_hub.

Only the files a dictionary needs are fetched (never, say, Gemma Scope 2's large
`examples.safetensors`). Any failure, offline mode included, becomes a `DictionaryError`
that says how to download the files and pass the local directory instead.
"""

import re
from pathlib import Path

from qlens_jax.dictionaries import DictionaryError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(?:/.*)?$")
# Files any supported format keeps in a dictionary's folder.
FOLDER_FILES = (
    "cfg.json",
    "sae_weights.safetensors",
    "sparsity.safetensors",
    "config.json",
    "params.safetensors",
    "params.npz",
    "sae.safetensors",
    "hyperparams.json",
    "checkpoints/final.safetensors",
    "ae.pt",
)
# Files kept at a repository's root by formats with one file per layer.
ROOT_FILES = ("config.yaml", "config.json")


def looks_like_hub_id(source: str) -> bool:
    return bool(HUB_ID.match(source)) and not source.startswith((".", "/", "~"))


def split_hub_id(source: str, path: str | None) -> tuple[str, str]:
    """`"org/repo/sub/dir"` (and an optional `path`) -> (`"org/repo"`, `"sub/dir[/path]"`)."""
    parts = source.strip("/").split("/")
    repo_id, inside = "/".join(parts[:2]), "/".join(parts[2:])
    if path:
        inside = f"{inside}/{path.strip('/')}" if inside else path.strip("/")
    return repo_id, inside


def _patterns(inside: str, layer: int | None) -> list[str]:
    if inside and re.search(r"\.(pt|pth|npz|safetensors)$", inside):
        parent = inside.rsplit("/", 1)[0] if "/" in inside else ""
        run_config = [inside.split(".pt")[0] + "_cfg.json"] if inside.endswith(".pt") else []  # hook_z SAEs
        return [inside] + run_config + [f"{parent}/{f}" if parent else f for f in ROOT_FILES]
    prefix = f"{inside}/" if inside else ""
    names = ("layer_{}.safetensors", "layer{}.sae.pt", "W_enc_{}.safetensors", "W_dec_{}.safetensors")
    per_layer = [prefix + n.format("*" if layer is None else layer) for n in names]
    return [prefix + f for f in FOLDER_FILES] + [prefix + f for f in ROOT_FILES] + per_layer


def fetch(
    source: str,
    path: str | None = None,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    layer: int | None = None,
) -> Path:
    """Download (or find in the cache) what `source`/`path` needs; return the local path."""
    repo_id, inside = split_hub_id(source, path)
    where = f"{repo_id}" + (f" path {inside!r}" if inside else "")
    advice = (
        f"Download it first, e.g. `hf download {repo_id} "
        + (f"--include '{inside}*' " if inside else "")
        + "--local-dir DIR`, and pass the local directory: load_dictionary('DIR"
        + (f"/{inside}" if inside else "")
        + "')."
    )
    try:
        from huggingface_hub import snapshot_download

        root = snapshot_download(
            repo_id, revision=revision, cache_dir=cache_dir, allow_patterns=_patterns(inside, layer)
        )
    except Exception as e:  # offline, not found, no network, gated, ...
        raise DictionaryError(
            f"could not get {where} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            f"{advice} (No local path {source!r} exists either.)"
        ) from None
    local = Path(root) / inside if inside else Path(root)
    if not local.exists():
        raise DictionaryError(f"{where}: nothing matching was found on the Hub. {advice}")
    return local
