"""Hugging Face `config.json` -> `ModelConfig`, refusing every option it does not implement.

The front of the family registry (`converters.families`): each family's spec lists the keys
it reads, the values it requires of the keys it does not implement and its inert keys; any
other key raises `UnsupportedOptionError` naming it. Nothing is silently ignored.
"""

from __future__ import annotations

from typing import Any

from converters.errors import ConversionError, UnsupportedOptionError
from converters.families import COMMON_INERT_KEYS, family, supported_model_types, wrapped_family
from qlens_jax.models import ModelConfig

SUPPORTED_MODEL_TYPES = supported_model_types()


def is_multimodal(raw: dict[str, Any]) -> bool:
    """Whether `raw` is a multimodal wrapper's config, of which only the language model converts."""
    return wrapped_family(raw.get("model_type")) is not None


def language_model_config(raw: dict[str, Any]) -> dict[str, Any]:
    """The text config of a multimodal wrapper's config, after checking the wrapper's own options.

    Only what a text-only forward pass reads is accepted: the wrapper's image options
    (`FamilySpec.wrapper_keys`) and bookkeeping; any other top-level option raises
    `UnsupportedOptionError` naming it. The text config is then checked like a text model's.
    """
    wrapper = raw["model_type"]
    spec = wrapped_family(wrapper)
    known = spec.wrapper_keys | COMMON_INERT_KEYS | {"text_config", "tie_word_embeddings"}
    unknown = sorted(k for k in raw if k not in known)
    if unknown:
        raise UnsupportedOptionError(
            f"{wrapper} (multimodal) config option(s) not supported by the converter: {', '.join(unknown)}"
        )
    text = raw.get("text_config")
    if not isinstance(text, dict):
        raise ConversionError(f"{wrapper} (multimodal) config has no text_config: cannot convert its language model")
    text = dict(text)
    if text.setdefault("model_type", spec.model_type) != spec.model_type:
        raise UnsupportedOptionError(
            f"{wrapper} (multimodal) config has a text_config of model_type {text['model_type']!r}; "
            f"only {spec.model_type!r} is supported"
        )
    if spec.wrapper_check is not None:
        spec.wrapper_check(text, wrapper)
    # transformers ties the wrapper's lm_head by the top-level value (its default); the text
    # config's own value belongs to its headless language model and is never read.
    text["tie_word_embeddings"] = raw.get("tie_word_embeddings", spec.wrapper_tie_default)
    return text


def model_config_from_hf(raw: dict[str, Any]) -> ModelConfig:
    """Build a `ModelConfig` from a Hugging Face config dict (as in `config.json`).

    A multimodal wrapper (`gemma3` with a `text_config`) gives the config of its language model.
    """
    label = f"{raw.get('model_type')} config"
    if is_multimodal(raw):
        label = f"{raw['model_type']} (multimodal) text_config"
        raw = language_model_config(raw)
    return family(raw.get("model_type")).model_config(raw, label)
