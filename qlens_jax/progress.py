"""Progress bars (tqdm) that can be silenced with one flag."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

T = TypeVar("T")


def progress(items: Iterable[T], desc: str, quiet: bool = False, **kwargs) -> Iterable[T]:
    """`items`, with a tqdm bar (rate and time left) unless `quiet`."""
    if quiet:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, dynamic_ncols=True, **kwargs)
