"""Sparse dictionaries (SAEs and transcoders) for Query Lens.

`Dictionary` holds one dictionary's weights, activation and input conventions, and where it
sits in the model; `DictionarySet` is the collection the kernel takes whole. Files are read
by `converters.load_dictionary` / `converters.load_dictionaries`.
"""

from .dictionary import Dictionary, DictionaryInfo
from .dictionary_set import DictionarySet
from .errors import DictionaryError
from .normalization import estimate_input_scale
from .sites import (
    SAE_SITES,
    TRANSCODER_INPUT_SITES,
    TRANSCODER_OUTPUT_SITES,
    HookSite,
    default_name,
    parse_hook_name,
    width_label,
)
from .transforms import astype, fold_input_scale
from .validation import ModelFacts, model_facts, validate_dictionary

__all__ = [
    "Dictionary",
    "DictionaryError",
    "DictionaryInfo",
    "DictionarySet",
    "HookSite",
    "ModelFacts",
    "SAE_SITES",
    "TRANSCODER_INPUT_SITES",
    "TRANSCODER_OUTPUT_SITES",
    "astype",
    "default_name",
    "estimate_input_scale",
    "fold_input_scale",
    "model_facts",
    "parse_hook_name",
    "validate_dictionary",
    "width_label",
]
