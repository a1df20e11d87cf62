"""How a training stream's micro-batches are shared among dataloader workers.

Every stream (Collatz, token windows, random tokens) makes micro-batch ``s`` as a pure
function of (seed, s, rank). Worker ``w`` of ``W`` makes the micro-batches with
``s % W == w``; PyTorch collects worker outputs round-robin, so the loader still yields
``start, start + 1, ...`` in order, whatever the number of workers.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from torch.utils.data import get_worker_info


def worker_steps(start: int, end: int | None = None) -> Iterator[int]:
    """The micro-batch indices this worker produces, from ``start`` (the resume position) to ``end``."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info else (0, 1)
    if end is None:
        return itertools.count(start + worker, workers)
    return iter(range(start + worker, end, workers))
