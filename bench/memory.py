"""Resident memory while streaming training windows from a 2 GB token file.

The file is written once (uint16, 1 G tokens, not sparse), then 2000 micro-batches of random
windows are drawn through a DataLoader exactly as training does. RSS is read from /proc for
this process and its dataloader workers.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def _children() -> list[int]:
    try:
        with open(f"/proc/{os.getpid()}/task/{os.getpid()}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def measure(file_gb: float = 2.0, steps: int = 2000, batch: int = 32, block: int = 1024, workers: int = 2,
            directory: str | None = None) -> dict:
    from torch.utils.data import DataLoader

    from lm_lightning.data.tokens import RandomWindows, TokenFile

    n_tokens = int(file_gb * 2**30) // 2
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = Path(tmp) / "tokens.bin"
        chunk = (np.arange(1 << 24, dtype=np.uint32) * 2654435761 % 50257).astype(np.uint16)
        with open(path, "wb") as f:
            for _ in range(n_tokens // len(chunk)):
                f.write(chunk.tobytes())
        tokens = TokenFile(path, "uint16")
        ds = RandomWindows(tokens, batch, block, seed=0, steps_per_epoch=steps)
        loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                            prefetch_factor=4 if workers else None)
        it = iter(loader)
        for _ in range(20):  # warm up: workers started, first pages read
            next(it)
        before = _rss_mb([os.getpid(), *_children()])
        peak = before
        for i in range(steps - 20):
            next(it)
            if i % 100 == 0:
                peak = max(peak, _rss_mb([os.getpid(), *_children()]))
        after = _rss_mb([os.getpid(), *_children()])
        del it, loader
    return {"file_gb": n_tokens * 2 / 2**30, "steps": steps, "batch": batch, "block": block, "workers": workers,
            "rss_before_mb": before, "rss_after_mb": after, "rss_growth_mb": max(after, peak) - before}
