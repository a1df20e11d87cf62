"""Random tokens: a data module for throughput measurements and pipeline smoke tests.

Needs no files and no tokenizer. Micro-batch ``s`` of rank ``r`` is drawn from a generator
seeded with (seed, s, r), so runs and resumes are reproducible like the real sources.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset

from lm_lightning.data.base import LMDataModule
from lm_lightning.data.streams import Loader, worker_steps


class RandomWindows(IterableDataset):
    def __init__(self, seed: int, batch_size: int, block_size: int, vocab_size: int,
                 rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        self.seed, self.batch_size, self.block_size, self.vocab_size = seed, batch_size, block_size, vocab_size
        self.rank, self.world_size, self.start = rank, world_size, start

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(hash((self.seed, step, self.rank)) & 0x7FFF_FFFF_FFFF_FFFF)
        window = torch.randint(0, self.vocab_size, (self.batch_size, self.block_size + 1), generator=g)
        return {"input_ids": window[:, :-1], "labels": window[:, 1:]}

    def __iter__(self):
        return map(self.batch, worker_steps(self.start))


class SyntheticDataModule(LMDataModule):
    task = "synthetic"
    objectives = ["next_token"]

    def __init__(self, vocab_size: int = 50304, block_size: int = 1024, batch_size: int = 8,
                 num_workers: int = 0, seed: int = 0, val_batches: int = 2, pin_memory: bool | None = None) -> None:
        super().__init__()
        if vocab_size < 2 or block_size < 1 or batch_size < 1:
            raise ValueError("data.vocab_size, data.block_size and data.batch_size must be positive")
        self.vocab_size, self.block_size, self.batch_size = vocab_size, block_size, batch_size
        self.num_workers, self.seed, self.val_batches, self.pin_memory = num_workers, seed, val_batches, pin_memory

    def _loader(self, dataset) -> DataLoader:
        pin = self.pin()
        kw: dict[str, Any] = {"persistent_workers": True, "prefetch_factor": 4} if self.num_workers else {}
        return Loader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=pin, **kw)

    def train_dataloader(self) -> DataLoader:
        rank, world = self.rank()
        return self._loader(RandomWindows(self.seed, self.batch_size, self.block_size, self.vocab_size,
                                          rank, world, self.start_step()))

    def val_dataloader(self) -> DataLoader:
        stream = RandomWindows(self.seed + 1, self.batch_size, self.block_size, self.vocab_size)
        return DataLoader([stream.batch(i) for i in range(self.val_batches)], batch_size=None)
