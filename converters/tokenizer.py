"""`load_tokenizer`: a `tokenizers.Tokenizer` from a directory, hub id or transformers tokenizer."""

from __future__ import annotations

from typing import Any

from converters.errors import ConversionError
from converters.hub import resolve_local

TOKENIZER_FILES = ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"]


def load_tokenizer(source: Any):
    """The tokenizer of a model: `tokenizer.json`, or GPT-2 style `vocab.json` + `merges.txt`.

    `source` may also be a transformers fast tokenizer (its backend tokenizer is used) or a
    `tokenizers.Tokenizer`, returned as is.
    """
    from tokenizers import Tokenizer

    if isinstance(source, Tokenizer):
        return source
    if hasattr(source, "backend_tokenizer"):
        return source.backend_tokenizer
    directory = resolve_local(source, TOKENIZER_FILES)
    if directory.is_file():
        directory = directory.parent
    tokenizer_json = directory / "tokenizer.json"
    if tokenizer_json.exists():
        try:
            return Tokenizer.from_file(str(tokenizer_json))
        except Exception as err:
            raise ConversionError(f"cannot read {tokenizer_json}: {err}") from err
    vocab, merges = directory / "vocab.json", directory / "merges.txt"
    if vocab.exists() and merges.exists():
        from tokenizers import decoders, models, pre_tokenizers

        tokenizer = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        return tokenizer
    raise ConversionError(f"no tokenizer in {directory}: expected tokenizer.json or vocab.json + merges.txt")
