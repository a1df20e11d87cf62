"""Collatz parity vectors as a LightningDataModule.

Training data is an endless stream generated on the fly: micro-batch ``s`` of rank ``r``
(of ``R``) is stream batch ``s * R + r``, and stream batch ``b`` holds samples
``b * B .. (b + 1) * B - 1``, each a pure function of ``(seed, sample index)``. Dataloader
worker ``w`` of ``W`` generates the micro-batches with ``s % W == w``; PyTorch hands them
back round-robin, so the order never depends on the number of workers. Resuming at
micro-batch ``s`` therefore replays exactly what an uninterrupted run would have seen, and
no two ranks or workers ever draw the same sample (and so, in normal mode, the same n).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lm_lightning import collatz
from lm_lightning.data.base import LMDataModule
from lm_lightning.data.streams import Loader, worker_steps
from lm_lightning.errors import UserError
from lm_lightning.lit.objectives import IGNORE_INDEX

# Validation numbers come from a separate seed and a distant normal-mode range, so they are
# never training samples.
VAL_SEED_OFFSET = 1_000_003
VAL_NORMAL_OFFSET = 2**40


def encode(pb: collatz.ParityBatch, block_size: int, ns: list[int]) -> dict[str, Any]:
    """Turn parity vectors into model tensors.

    input_ids  (B, T): BOS, b0, b1, ... then PAD      labels (B, T): b0, b1, ... then -100
    padding_mask (B, T): True at real tokens          lengths (B,): real tokens per row
    """
    B, T = len(pb), block_size
    bits = torch.from_numpy(pb.bits[:, :T].astype(np.int64))  # (B, T): bit j is the label at j
    nbits = torch.from_numpy(np.minimum(pb.lengths, T))  # bits available as labels
    pos = torch.arange(T)
    labels = torch.where(pos[None, :] < nbits[:, None], bits, IGNORE_INDEX)
    inputs = torch.full((B, T), collatz.PAD, dtype=torch.long)
    inputs[:, 0] = collatz.BOS
    inputs[:, 1:] = torch.where(pos[None, 1:] <= nbits[:, None], bits[:, :-1], collatz.PAD)
    lengths = torch.clamp(nbits + 1, max=T)
    anomalies = [
        {"n": ns[i], "kind": "step_cap" if pb.anomaly[i] == collatz.ANOMALY_STEP_CAP else "cycle"}
        for i in np.flatnonzero(pb.anomaly)
    ]
    stopping = torch.from_numpy(pb.stopping_time.copy())
    # An anomalous row has no defined stopping time; regress it onto the steps done instead
    # of a NaN, and report it through the anomaly list.
    stopping = torch.where(stopping < 0, torch.from_numpy(pb.total_stopping_time.copy()), stopping)
    return {
        "input_ids": inputs,
        "labels": labels,
        "padding_mask": pos[None, :] < lengths[:, None],
        "lengths": lengths,
        "stopping_time": stopping,
        "truncated": int(pb.truncated.sum()),
        "anomalies": anomalies,
    }


class CollatzStream(IterableDataset):
    def __init__(self, seed: int, batch_size: int, block_size: int, sampling: dict[str, Any],
                 max_steps: int, rank: int = 0, world_size: int = 1, start: int = 0) -> None:
        self.seed, self.batch_size, self.block_size = seed, batch_size, block_size
        self.sampling, self.max_steps = sampling, max_steps
        self.rank, self.world_size, self.start = rank, world_size, start

    def batch(self, step: int) -> dict[str, Any]:
        """Micro-batch ``step`` of this rank: a pure function of (seed, step, rank)."""
        index = step * self.world_size + self.rank
        ns = collatz.stream_batch(self.seed, index, self.batch_size, **self.sampling)
        pb = collatz.parity_batch(ns, max_len=self.block_size, max_steps=self.max_steps)
        return encode(pb, self.block_size, ns)

    def __iter__(self):
        return map(self.batch, worker_steps(self.start))


class CollatzEval(Dataset):
    """A fixed, held-out set of batches, generated once."""

    def __init__(self, batches: list[dict[str, Any]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.batches[i]


class CollatzDataModule(LMDataModule):
    task = "collatz"
    objectives = ["next_token", "stopping_time"]
    vocab_size = collatz.VOCAB_SIZE

    def __init__(self, block_size: int = 128, batch_size: int = 64, num_workers: int = 0,
                 seed: int = 0, hard_fraction: float = 0.5, normal_start: int = 2**20,
                 hard_bits: tuple[int, int] | list[int] = (69, 100), max_steps: int = 100_000,
                 val_samples: int = 2048, pin_memory: bool | None = None,
                 prefetch_factor: int = 4) -> None:
        super().__init__()
        self.set_sizes(block_size, batch_size, min_block=2)
        if not 0.0 <= hard_fraction <= 1.0:
            raise ValueError(f"data.hard_fraction must be in [0, 1], got {hard_fraction}")
        lo, hi = hard_bits
        if not 2 <= lo <= hi:
            raise ValueError(f"data.hard_bits must be [low, high] with 2 <= low <= high, got {list(hard_bits)}")
        if normal_start < 2:
            raise ValueError(f"data.normal_start must be >= 2, got {normal_start}")
        self.num_workers = num_workers
        self.seed, self.max_steps, self.val_samples = seed, max_steps, val_samples
        self.sampling = {"hard_fraction": hard_fraction, "normal_start": int(normal_start),
                         "hard_bits": (int(lo), int(hi))}
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self._val: CollatzEval | None = None

    # -- derived quantities the module and the baselines use ---------------------------------
    def samples_per_batch(self) -> int:
        return self.batch_size

    def sample_batches(self, seed: int, sampling: dict[str, Any], n_samples: int) -> list[dict[str, Any]]:
        n_batches = max(1, math.ceil(n_samples / self.batch_size))
        stream = CollatzStream(seed, self.batch_size, self.block_size, sampling, self.max_steps)
        return [stream.batch(i) for i in range(n_batches)]

    def setup(self, stage: str | None = None) -> None:
        if self._val is None:
            sampling = dict(self.sampling, normal_start=self.sampling["normal_start"] + VAL_NORMAL_OFFSET)
            self._val = CollatzEval(self.sample_batches(self.seed + VAL_SEED_OFFSET, sampling, self.val_samples))

    def train_eval_batches(self, n_batches: int) -> list[dict[str, Any]]:
        return self.sample_batches(self.seed, self.sampling, n_batches * self.batch_size)

    def size_lines(self) -> list[str]:
        """An endless generated stream, a fixed validation set."""
        if self._val is None:
            return []
        val = self._val.batches
        samples = sum(int(b["input_ids"].shape[0]) for b in val)
        tokens = sum(int(b["lengths"].sum()) if "lengths" in b else int(b["input_ids"].numel()) for b in val)
        return ["Train data: generated on the fly (endless)", f"Validation data: {samples:,} samples, {tokens:,} tokens"]

    def _loader(self, dataset, workers: int, sampler=None) -> DataLoader:
        pin = self.pin()
        kwargs: dict[str, Any] = {}
        if workers > 0:
            kwargs = {"persistent_workers": True, "prefetch_factor": self.prefetch_factor}
        return Loader(dataset, batch_size=None, sampler=sampler, num_workers=workers, pin_memory=pin, **kwargs)

    def _eval_sampler(self, dataset: Dataset):
        """Rank r of R evaluates batches r, r + R, ...: the split once in total.

        Left alone, Lightning would wrap this map-style set in a DistributedSampler, which
        pads the last round by repeating batches, so some would count twice. Lightning keeps
        any sampler that is already a DistributedSampler.
        """
        rank, world = self.rank()
        if world <= 1:
            return None
        from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

        if len(dataset) < world:
            # A rank without a single batch would skip the collective in DDP's first eval forward.
            raise UserError(f"{len(dataset)} validation batches cannot be split over {world} ranks; "
                             f"raise data.val_samples to at least {world * self.batch_size}")
        return UnrepeatedDistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        rank, world = self.rank()
        stream = CollatzStream(self.seed, self.batch_size, self.block_size, self.sampling,
                               self.max_steps, rank=rank, world_size=world, start=self.start_step())
        return self._loader(stream, self.num_workers)

    def val_dataloader(self) -> DataLoader:
        self.setup("validate")
        return self._loader(self._val, 0, sampler=self._eval_sampler(self._val))

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()  # no test split of its own: resolve_split("test", ...) is "val"

    # -- trivial baselines for the final table -----------------------------------------------
    def baselines(self, n_train_samples: int = 4096) -> dict[str, float]:
        """What a model that learned nothing (or only bit frequencies) would score.

        - unigram: entropy of the bit frequencies in the validation labels (nats);
        - floor: entropy of the next bit given the previous one, the best any model can do
          without tracking the number itself (after an odd step the next bit is always 0);
        - mean predictor: stopping-time MAE when always predicting the training-stream mean.
        """
        self.setup("validate")
        labels = torch.cat([b["labels"] for b in self._val.batches])
        inputs = torch.cat([b["input_ids"] for b in self._val.batches])
        mask = labels != IGNORE_INDEX
        y, prev = labels[mask].double(), inputs[mask]
        unigram = _entropy(y.mean().item())
        floor = 0.0
        for p in (collatz.BOS, collatz.BIT0, collatz.BIT1):
            sel = prev == p
            if sel.any():
                floor += sel.double().mean().item() * _entropy(y[sel].mean().item())
        train = self.sample_batches(self.seed, self.sampling, n_train_samples)
        mean = torch.cat([b["stopping_time"] for b in train]).double().mean()
        val_st = torch.cat([b["stopping_time"] for b in self._val.batches]).double()
        return {
            "next_token_unigram": unigram,
            "next_token_floor": floor,
            "next_bit_acc_majority": max(y.mean().item(), 1 - y.mean().item()),
            "stopping_time_mae_mean": (val_st - mean).abs().mean().item(),
        }


def _entropy(p: float) -> float:
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))
