"""The three splits and the one rule that maps a requested split to the one that is read.

Kept free of torch and Lightning imports: the text sources and ``prepare`` use it too.
"""

from __future__ import annotations

from collections.abc import Callable, Container

SPLITS = ("train", "val", "test")


def resolve_split(split: str, has: Container[str] | Callable[[str], bool]) -> str:
    """The split to read for ``split``: a data source without a test split is tested on its
    validation split ("test falls back to val"); every other split is itself.

    ``has`` says which splits the source has: a container of split names or a predicate.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    present = has(split) if callable(has) else split in has
    return "val" if split == "test" and not present else split
