"""Converters: Hugging Face / PyTorch checkpoints and SAE formats into qlens-jax modules."""

from converters.checkpoint import load_checkpoint, save_checkpoint
from converters.dictionaries import load_dictionaries, load_dictionary
from converters.errors import ConversionError, UnsupportedOptionError
from converters.hf_config import model_config_from_hf
from converters.models import load_model
from converters.tokenizer import load_tokenizer

__all__ = [
    "ConversionError",
    "UnsupportedOptionError",
    "load_checkpoint",
    "load_dictionaries",
    "load_dictionary",
    "load_model",
    "load_tokenizer",
    "model_config_from_hf",
    "save_checkpoint",
]
