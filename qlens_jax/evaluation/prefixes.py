"""Neutral prefixes for the output score: 100 English sentence openers, written for this project.

They commit to no topic, so the next-token distribution after them is broad and a steered
feature's effect shows in which tokens move up. `prefix_batch` tokenizes them (no special
tokens; BOS first only when asked) into a right-padded batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qlens_jax.errors import InputError

NEUTRAL_PREFIXES = (
    "Findings show that",
    "I once heard that",
    "It is often said that",
    "According to the report,",
    "The main point is that",
    "In the end,",
    "As a matter of fact,",
    "Many people believe that",
    "It turns out that",
    "One thing to remember is that",
    "Recent work suggests that",
    "The truth is that",
    "Some would argue that",
    "It was clear that",
    "For the most part,",
    "At first glance,",
    "On the other hand,",
    "In my experience,",
    "The next day,",
    "Later that week,",
    "Everyone agreed that",
    "She told me that",
    "He said that",
    "They found that",
    "We learned that",
    "It seems that",
    "The answer is",
    "What matters most is",
    "The idea was that",
    "It has been known for years that",
    "Experts point out that",
    "The article explains that",
    "The letter said that",
    "In this case,",
    "To be honest,",
    "Without a doubt,",
    "As it happens,",
    "By the way,",
    "In short,",
    "In other words,",
    "After a while,",
    "Before long,",
    "All of a sudden,",
    "Once upon a time,",
    "It is worth noting that",
    "The problem is that",
    "The good news is that",
    "The reason is that",
    "This means that",
    "As a result,",
    "For example,",
    "In general,",
    "Of course,",
    "Interestingly,",
    "Surprisingly,",
    "Unfortunately,",
    "Fortunately,",
    "Meanwhile,",
    "Nevertheless,",
    "However,",
    "Then",
    "So",
    "And yet",
    "Still,",
    "Above all,",
    "It is possible that",
    "It is likely that",
    "There is a chance that",
    "Nobody knows whether",
    "I wonder if",
    "I think that",
    "I believe that",
    "I remember that",
    "I noticed that",
    "You might think that",
    "You should know that",
    "We all know that",
    "Let me tell you that",
    "The story goes that",
    "It was then that",
    "It is true that",
    "Few people realize that",
    "Most of the time,",
    "From time to time,",
    "Every now and then,",
    "At the same time,",
    "In the beginning,",
    "At that moment,",
    "The following is",
    "Here is what happened:",
    "This is why",
    "That is how",
    "What I mean is that",
    "The question is whether",
    "The fact remains that",
    "It goes without saying that",
    "As far as I know,",
    "When all is said and done,",
    "Generally speaking,",
    "In any case,",
)
assert len(NEUTRAL_PREFIXES) == 100 and len(set(NEUTRAL_PREFIXES)) == 100


def prefix_batch(tokenizer, prefixes=NEUTRAL_PREFIXES, *, bos_id: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """`tokens [P, S]` int32 (right-padded with 0) and `mask`; BOS first when `bos_id` is given."""
    rows = [list(e.ids) for e in tokenizer.encode_batch(list(prefixes), add_special_tokens=False)]
    if bos_id is not None:
        rows = [[bos_id, *r] for r in rows]
    if any(len(r) == 0 for r in rows):
        raise ValueError("a prefix tokenizes to nothing")
    width = max(len(r) for r in rows)
    tokens = np.zeros((len(rows), width), np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, r in enumerate(rows):
        tokens[i, : len(r)], mask[i, : len(r)] = r, True
    return tokens, mask


def read_prefixes(path: str | Path) -> list[str]:
    """Prefixes from a file: a JSON list of strings (the authors' `data/generation_prompts.json`,
    the paper's list) or plain text, one prefix per line (blank lines skipped). `InputError`
    naming the file and the entry for anything else."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"--prefixes {path}: cannot be read ({err})") from None
    if path.suffix.lower() != ".json":
        prefixes = [line.strip() for line in text.splitlines() if line.strip()]
    else:
        try:
            prefixes = json.loads(text)
        except json.JSONDecodeError as err:
            raise InputError(f"--prefixes {path}: not valid JSON ({err})") from None
        if not isinstance(prefixes, list):
            raise InputError(f"--prefixes {path}: expected a JSON list of strings, got a {type(prefixes).__name__}")
        for i, prefix in enumerate(prefixes):
            if not isinstance(prefix, str) or not prefix.strip():
                raise InputError(f"--prefixes {path}: entry {i} is {prefix!r}, not a non-empty string")
    if not prefixes:
        raise InputError(f"--prefixes {path}: holds no prefix")
    return prefixes
