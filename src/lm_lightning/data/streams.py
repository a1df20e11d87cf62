"""How a training stream's micro-batches are shared among dataloader workers.

Every stream (Collatz, token windows, random tokens) makes micro-batch ``s`` as a pure
function of (seed, s, rank). Worker ``w`` of ``W`` makes the micro-batches with
``s % W == w``; PyTorch collects worker outputs round-robin, so the loader still yields
``start, start + 1, ...`` in order, whatever the number of workers. :class:`EpochLoader`
hands the stream its resume position each time an epoch starts.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, get_worker_info

# Token-window streams have a length (one epoch) so that Lightning can count epochs and steps;
# each worker draws distinct micro-batches, so the generic warning about duplicates does not apply.
warnings.filterwarnings("ignore", message=".*IterableDataset.*has `__len__` defined.*")


def worker_steps(start: int, end: int | None = None) -> Iterator[int]:
    """The micro-batch indices this worker produces, from ``start`` (the resume position) to ``end``."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    if end is None:
        return itertools.count(start + worker, workers)
    return iter(range(start + worker, end, workers))


class EpochLoader(DataLoader):
    """Re-reads the resume position each time an epoch starts (workers get a fresh copy)."""

    def __init__(self, *args: Any, start_fn: Any = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_fn = start_fn

    def __iter__(self):
        if self.start_fn is not None:
            self.dataset.start = self.start_fn()
        return super().__iter__()
