"""Sparse dictionaries (SAEs and transcoders) for Query Lens.

`Dictionary` holds one dictionary's weights, activation and input conventions, and where it
sits in the model; `DictionarySet` is the collection the kernel takes whole. Files are read
by `converters.load_dictionary` / `converters.load_dictionaries`.
"""

from .cross_layer import CrossLayerTranscoder, cross_layer_transcoder, is_cross_layer, refuse_cross_layer
from .dictionary import Dictionary, DictionaryInfo
from .dictionary_set import DictionarySet
from .errors import DictionaryError
from .normalization import estimate_input_scale
from .sites import (
    MODULE_OUTPUT_SITES,
    RESIDUAL_SAE_SITES,
    SAE_SITES,
    TRANSCODER_INPUT_SITES,
    TRANSCODER_OUTPUT_SITES,
    HookSite,
    default_name,
    has_post_norms,
    parse_hook_name,
    width_label,
)
from .transforms import astype, fold_input_scale
from .validation import ModelFacts, model_facts, validate_dictionary

__all__ = [
    "CrossLayerTranscoder",
    "Dictionary",
    "DictionaryError",
    "DictionaryInfo",
    "DictionarySet",
    "HookSite",
    "MODULE_OUTPUT_SITES",
    "ModelFacts",
    "RESIDUAL_SAE_SITES",
    "SAE_SITES",
    "TRANSCODER_INPUT_SITES",
    "TRANSCODER_OUTPUT_SITES",
    "astype",
    "cross_layer_transcoder",
    "default_name",
    "estimate_input_scale",
    "fold_input_scale",
    "has_post_norms",
    "is_cross_layer",
    "model_facts",
    "parse_hook_name",
    "refuse_cross_layer",
    "validate_dictionary",
    "width_label",
]
