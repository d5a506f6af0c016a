"""Byte-level BPE tokenizer like GPT-2's, trained with the `tokenizers` library.

GPT-2's pre-tokenizer (ByteLevel with its regex, no prefix space), byte-level decoder, and
one special token `<|endoftext|>` at id 0 (used between documents; no BOS is prepended).
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

EOT = "<|endoftext|>"


def train_tokenizer(text: str, vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split(EOT), trainer=trainer)
    if tok.token_to_id(EOT) != 0 or tok.get_vocab_size() != vocab_size:
        raise ValueError(f"unexpected vocabulary: size {tok.get_vocab_size()}, {EOT} at {tok.token_to_id(EOT)}")
    return tok


def encode(tok: Tokenizer, text: str) -> list[int]:
    """Token ids of `text`; `<|endoftext|>` in the text maps to its special id."""
    return tok.encode(text).ids


def save_tokenizer(tok: Tokenizer, folder: Path, model_max_length: int) -> None:
    """`tokenizer.json` plus the files `transformers.AutoTokenizer` / `GPT2Tokenizer` read."""
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    tok.model.save(str(folder))  # vocab.json, merges.txt
    special = {"bos_token": EOT, "eos_token": EOT, "unk_token": EOT}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": model_max_length,
        "add_prefix_space": False,
        "add_bos_token": False,
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
