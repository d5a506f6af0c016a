"""Resolving a user's `source` string: a local path, or a Hugging Face hub id.

The hub is contacted only when the user names a hub id; offline, the error says how to
pass a local directory instead.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from converters.errors import ConversionError

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def is_hub_id(source: str) -> bool:
    return bool(HUB_ID.match(source)) and not Path(source).exists()


def snapshot(repo_id: str, allow_patterns: list[str] | None = None, revision: str | None = None) -> Path:
    """Download (or find in the local cache) a hub repository; a clear error when offline."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=allow_patterns, revision=revision))
    except Exception as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        reason = "the hub is disabled (HF_HUB_OFFLINE is set)" if offline else f"{type(err).__name__}: {err}"
        raise ConversionError(
            f"could not fetch {repo_id!r} from the Hugging Face hub ({reason}). Download it where "
            f"there is network (`huggingface-cli download {repo_id} --local-dir DIR`) and pass the "
            "local directory instead."
        ) from err


def resolve_local(source: str | os.PathLike, allow_patterns: list[str] | None = None) -> Path:
    """A local directory for `source`: the path itself, or a hub snapshot for a hub id."""
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        return path
    if is_hub_id(text):
        return snapshot(text, allow_patterns)
    raise ConversionError(f"{text!r} is neither an existing path nor a Hugging Face hub id (org/name)")
