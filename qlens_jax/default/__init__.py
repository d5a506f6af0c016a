"""The embedded default: a small GPT-2 and its dictionaries, trained by this project.

Everything here is read from files inside the package, so the quickstart runs offline:

- `model_dir()`: Hugging Face GPT-2 folder (`config.json`, `model.safetensors`, `tokenizer.json`).
- `dictionary_dir(name)`, `DICTIONARY_NAMES`: SAELens folders (`cfg.json`, `sae_weights.safetensors`):
  TopK SAEs on `resid_post` of every layer and one ReLU transcoder of a middle MLP.
- `heldout_text_path()`: the held-out text slice (public domain, see `data/LICENSE.txt`), never
  seen in training; tests and the demo's token sample use it.
- `artifact_dir() / "quality.json"` and `"training.json"`: measured quality and the recipe.

How the files were made: `qlens_jax.default.training` and `docs/default.md`.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent

N_LAYERS = 4
TRANSCODER_LAYER = 2
# Folder names under `dictionaries/`, in layer order; the transcoder last.
SAE_NAMES = tuple(f"resid-post-{layer}" for layer in range(N_LAYERS))
TRANSCODER_NAME = f"transcoder-mlp-{TRANSCODER_LAYER}"
DICTIONARY_NAMES = (*SAE_NAMES, TRANSCODER_NAME)


def artifact_dir() -> Path:
    """Folder holding `model/`, `dictionaries/`, `quality.json` and `training.json`."""
    return _HERE / "artifacts"


def model_dir() -> Path:
    """Hugging Face GPT-2 folder of the default model (loads with `GPT2LMHeadModel`)."""
    return artifact_dir() / "model"


def dictionaries_dir() -> Path:
    return artifact_dir() / "dictionaries"


def dictionary_dir(name: str) -> Path:
    """SAELens folder of one default dictionary; `name` is one of `DICTIONARY_NAMES`."""
    if name not in DICTIONARY_NAMES:
        raise ValueError(f"unknown default dictionary {name!r}; expected one of {DICTIONARY_NAMES}")
    return dictionaries_dir() / name


def data_dir() -> Path:
    return _HERE / "data"


def heldout_text_path() -> Path:
    """The held-out text (UTF-8; novels separated by `<|endoftext|>`)."""
    return data_dir() / "heldout.txt"


def quality_path() -> Path:
    return artifact_dir() / "quality.json"


def training_record_path() -> Path:
    return artifact_dir() / "training.json"
