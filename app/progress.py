"""Progress reporting for long passes over many items (rebuild, export, import)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

#: Called with how many more items are done since its last call.
Progress = Callable[[int], None]

T = TypeVar("T")


def counted(items: Iterable[T], progress: Progress | None, *, every: int = 1000) -> Iterator[T]:
    """Yield `items`, calling `progress(n)` after every `every` of them and
    once more for the rest when they run out."""
    if progress is None:
        yield from items
        return
    unreported = 0
    for item in items:
        yield item
        unreported += 1
        if unreported == every:
            progress(unreported)
            unreported = 0
    if unreported:
        progress(unreported)
