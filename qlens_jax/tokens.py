"""Token ids -> the strings shown in signatures, and a token named by the user -> its id."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qlens_jax.errors import InputError


def token_strings(tokenizer) -> list[str]:
    """One display string per id: the id decoded alone, as the reference implementation shows it.

    Byte-level pieces that are not valid UTF-8 on their own decode to U+FFFD, exactly as
    `tokenizer.decode([id])` does in transformers.
    """
    return [tokenizer.decode([i], skip_special_tokens=False) for i in range(tokenizer.get_vocab_size())]


MAX_ID_DIGITS = 12  # `id:N` with more digits names no id of any vocabulary


class TokenSpecError(InputError):
    """A token, given as text or as `id:N`, that names no single token of the vocabulary."""


def _shown(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else f"{text[:limit]}...")


def token_id_of(spec: str | int, tokenizer, vocab: Sequence[str] | np.ndarray, option: str = "token") -> int:
    """The one token id that `spec` names: `id:N` (ASCII decimal digits), an int id, or text
    that `tokenizer` makes exactly one token of (`vocab` holds each id's display string, for
    showing a split). Anything else is a `TokenSpecError` naming `option` and the input."""
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise TokenSpecError(f"{option}: expected a token or id:N, got {type(spec).__name__}")
    if isinstance(spec, int):
        if not 0 <= spec < len(vocab):
            raise TokenSpecError(f"{option} id {spec}: the vocabulary has {len(vocab)} ids (0 .. {len(vocab) - 1})")
        return spec
    if spec.startswith("id:"):
        digits = spec[3:]
        if not (digits.isascii() and digits.isdigit()) or len(digits) > MAX_ID_DIGITS:
            raise TokenSpecError(
                f"{option} {_shown(spec)}: id:N needs N in ASCII decimal digits "
                f"(the vocabulary has {len(vocab)} ids, 0 .. {len(vocab) - 1})"
            )
        return token_id_of(int(digits), tokenizer, vocab, option)
    if not spec:
        raise TokenSpecError(f"{option}: empty token")
    try:
        spec.encode("utf-8")
    except UnicodeEncodeError as err:
        byte = ord(spec[err.start]) - 0xDC00 if 0xDC80 <= ord(spec[err.start]) <= 0xDCFF else None
        what = f"byte 0x{byte:02x}" if byte is not None else f"code point U+{ord(spec[err.start]):04X}"
        raise TokenSpecError(
            f"{option} {_shown(spec)}: not valid UTF-8 text ({what} at {err.start}); give the token as text or as id:N"
        ) from None
    ids = tokenizer.encode(spec, add_special_tokens=False).ids
    if len(ids) != 1:
        pieces = ", ".join(f"{vocab[i]!r} (id {i})" for i in ids[:8]) + (", ..." if len(ids) > 8 else "") or "nothing"
        raise TokenSpecError(
            f"{option} {_shown(spec)} is {len(ids)} tokens, not one: the tokenizer splits it into {pieces}; "
            "give one of them (or id:N)"
        )
    return int(ids[0])
