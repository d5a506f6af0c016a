"""`load_model`: a Hugging Face checkpoint (directory, hub id or in-memory model) -> `Transformer`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from converters.checkpoint import is_orbax_checkpoint, load_checkpoint
from converters.checkpoint_files import StateDictSource, open_checkpoint
from converters.errors import ConversionError
from converters.hf_config import is_multimodal, model_config_from_hf
from converters.hf_weights import fill_model
from converters.hub import resolve_local
from qlens_jax.models import Transformer

MODEL_FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer*", "*.txt", "vocab.json"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def _dtype(dtype: Any):
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ConversionError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPES)})")
        return DTYPES[dtype]
    return dtype


def read_hf_config(directory: Path) -> dict:
    path = directory / "config.json"
    if not path.exists():
        raise ConversionError(f"{directory} has no config.json: not a Hugging Face model directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConversionError(f"cannot parse {path}: {err}") from err


def load_model(source: Any, dtype: Any = "float32") -> Transformer:
    """Convert a Hugging Face causal LM into the Equinox `Transformer`.

    `source`: a local checkpoint directory (config.json + model.safetensors, sharded
    safetensors with an index, or pytorch_model.bin), a directory written by
    `converters.save_checkpoint` (Orbax), a `transformers` model object, or a hub id.
    A multimodal Gemma-3 checkpoint (`Gemma3ForConditionalGeneration`) gives its language model.
    """
    dtype = _dtype(dtype)
    if hasattr(source, "state_dict") and hasattr(source, "config"):
        raw = source.config.to_dict()
        config = model_config_from_hf(raw)
        state = StateDictSource(source.state_dict())
        return fill_model(config, state, dtype, where="the in-memory model", multimodal=is_multimodal(raw))
    directory = resolve_local(source, MODEL_FILES)
    if is_orbax_checkpoint(directory):
        return load_checkpoint(directory, dtype=dtype)
    raw = read_hf_config(directory)
    config = model_config_from_hf(raw)
    tensors = open_checkpoint(directory)
    return fill_model(config, tensors, dtype, where=str(directory), multimodal=is_multimodal(raw))
