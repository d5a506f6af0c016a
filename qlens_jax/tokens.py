"""Token ids -> the strings shown in signatures."""

from __future__ import annotations


def token_strings(tokenizer) -> list[str]:
    """One display string per id: the id decoded alone, as the reference implementation shows it.

    Byte-level pieces that are not valid UTF-8 on their own decode to U+FFFD, exactly as
    `tokenizer.decode([id])` does in transformers.
    """
    return [tokenizer.decode([i], skip_special_tokens=False) for i in range(tokenizer.get_vocab_size())]
