"""Weighted mixtures of token sources: ``data.mixture: [{path: DIR_OR_GLOB, weight: w}, ...]``.

Window ``j`` of micro-batch ``s`` on rank ``r`` (of ``R``) is global window
``g = (s * R + r) * batch_size + j``; it comes from the source whose cumulative-weight interval
holds ``frac((g + 0.5) * phi)`` (phi the golden ratio's fractional part, a low-discrepancy
sequence). So the sources' shares of any run of consecutive windows match the weights to
within a few windows, every micro-batch holds each source about in proportion, and which
source fills which row is a pure function of (step, rank). Where in the source a window
starts is drawn from the generator seeded by (seed, s, r), as for one source: exact resume
holds. A source is a shard folder (its ``train_*`` shards; its ``val_*`` is that source's
validation) or a glob / file of token files (training only).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from lm_lightning.data.streams import worker_steps
from lm_lightning.data.tokens import TokenFile, TokenShards, open_shard_split, open_tokens, shard_dir_meta
from lm_lightning.errors import UserError

PHI = (math.sqrt(5.0) - 1.0) / 2.0


def source_name(path: str, taken: set[str]) -> str:
    base = Path(str(path).rstrip("/")).name or "source"
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", base.split("*")[0].strip("_.-")) or "source"
    out, k = name, 2
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


class Source:
    """One mixture entry: its training tokens, its validation tokens (or None) and its weight."""

    def __init__(self, path: str, weight: float, name: str, dtype: str | None = None) -> None:
        self.path, self.weight, self.name = str(path), float(weight), name
        p = Path(self.path)
        if p.is_dir():
            self.meta = shard_dir_meta(p)
            self.train = open_shard_split(p, "train")
            self.val = open_shard_split(p, "val")
            if self.train is None:
                raise UserError(f"data.mixture: {p} has no training shards")
        else:
            self.meta = {}
            self.train, self.val = open_tokens(self.path, dtype, what="data.mixture path"), None


def parse_mixture(entries: Any, dtype: str | None = None) -> list[Source]:
    """``data.mixture`` entries (``{path, weight}``; ``name`` optional) as sources, weights checked."""
    from lm_lightning.data.sources import _plain

    entries = _plain(entries)  # Hydra hands over a ListConfig
    if not isinstance(entries, list | tuple) or not entries:
        raise UserError("data.mixture must be a non-empty list of {path: DIR_OR_GLOB, weight: w}")
    sources, names = [], set()
    for i, e in enumerate(entries):
        if not hasattr(e, "get") or not e.get("path"):
            raise UserError(f"data.mixture[{i}] needs a path (a shard folder or a glob of token files), got {e!r}")
        try:
            w = float(e.get("weight", 1.0))
        except (TypeError, ValueError):
            w = -1.0
        if not w > 0 or not math.isfinite(w):
            raise UserError(f"data.mixture[{i}].weight must be a positive number, got {e.get('weight')!r}")
        name = str(e["name"]) if e.get("name") else source_name(e["path"], names)
        sources.append(Source(e["path"], w, name, dtype))
    return sources


def assign(step: int, rank: int, world: int, batch_size: int, cdf: np.ndarray) -> np.ndarray:
    """The source index of each row of micro-batch ``step`` on ``rank`` (see the module docstring)."""
    g = (step * world + rank) * batch_size + np.arange(batch_size, dtype=np.float64)
    u = np.modf((g + 0.5) * PHI)[0]
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


class MixtureWindows(IterableDataset):
    """Training windows from several sources in proportion to their weights (a pure function of (seed, step, rank))."""

    def __init__(self, sources: list[TokenFile | TokenShards], weights: list[float], batch_size: int,
                 block_size: int, seed: int, steps_per_epoch: int, rank: int = 0, world_size: int = 1,
                 start: int = 0) -> None:
        self.sources, self.batch_size, self.block_size, self.seed = sources, batch_size, block_size, seed
        self.steps_per_epoch, self.rank, self.world_size, self.start = max(1, steps_per_epoch), rank, world_size, start
        self.span = block_size + 1
        for s in sources:
            if len(s) < self.span + 1:
                raise UserError(f"{s.path}: {len(s)} tokens is too few for data.block_size={block_size}")
        w = np.asarray(weights, dtype=np.float64)
        self.proportions = w / w.sum()
        self.cdf = np.cumsum(self.proportions)
        self.cdf[-1] = 1.0
        self.valid = np.asarray([len(s) - self.span + 1 for s in sources], dtype=np.int64)

    def rows(self, step: int) -> np.ndarray:
        return assign(step, self.rank, self.world_size, self.batch_size, self.cdf)

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, step, self.rank])
        which = self.rows(step)
        starts = (rng.random(self.batch_size) * self.valid[which]).astype(np.int64)
        x = torch.from_numpy(np.stack([self.sources[k].read(int(s), self.span) for k, s in zip(which, starts)]))
        return {"input_ids": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous()}

    def realized(self, steps: int, start: int = 0) -> np.ndarray:
        """Each source's share of the windows of micro-batches [start, start + steps) on every rank."""
        # Micro-batches [start, start + steps) of every rank are global windows [lo, hi).
        lo, hi = start * self.world_size * self.batch_size, (start + steps) * self.world_size * self.batch_size
        counts = np.zeros(len(self.sources), dtype=np.int64)
        for a in range(lo, hi, 1 << 20):
            g = np.arange(a, min(hi, a + (1 << 20)), dtype=np.float64)
            which = np.minimum(np.searchsorted(self.cdf, np.modf((g + 0.5) * PHI)[0], side="right"),
                               len(self.cdf) - 1)
            counts += np.bincount(which, minlength=len(self.sources))
        return counts / max(1, counts.sum())

    def __iter__(self):
        end = (self.start // self.steps_per_epoch + 1) * self.steps_per_epoch
        return map(self.batch, worker_steps(self.start, end))

    def __len__(self) -> int:
        return self.steps_per_epoch


class PerSourceValidation:
    """Scores each mixture source's validation shards after every validation: ``val/<name>/loss``.

    The overall validation (``val/loss``) runs as usual over every source's ``val_*`` shards
    together; this adds one cross-entropy per source (nats per predicted token, the same
    sequential windows and ``data.eval_batches`` cap). Attached to the trainer by the data
    module when ``data.mixture`` is set; a Lightning callback made lazily (no import here).
    """

    @staticmethod
    def make(sources: list[Source], batch_size: int, block_size: int, max_batches: int | None):
        import lightning.pytorch as pl

        from lm_lightning.data.tokens import SequentialWindows

        class _Callback(pl.Callback):
            def on_validation_epoch_end(self, trainer, pl_module) -> None:
                if trainer.sanity_checking:
                    return
                for name, loss in self.losses(trainer, pl_module).items():
                    pl_module.log(f"val/{name}/loss", loss, sync_dist=False)

            def losses(self, trainer, pl_module) -> dict[str, float]:
                out = {}
                forward = trainer.precision_plugin.forward_context() if trainer is not None else None
                was_training = pl_module.training
                pl_module.eval()
                try:
                    for s in sources:
                        if s.val is None:
                            continue
                        ds = SequentialWindows(s.val, batch_size, block_size, max_batches)
                        total = torch.zeros((), dtype=torch.float64)
                        count = 0
                        for i in range(len(ds)):
                            batch = {k: v.to(pl_module.device) for k, v in ds[i].items()}
                            with torch.no_grad(), (forward if forward is not None else _null()):
                                logits = pl_module(batch)["logits"]
                            labels = batch["labels"]
                            total += torch.nn.functional.cross_entropy(
                                logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                                reduction="sum").double().cpu()
                            count += int((labels != -100).sum())
                        out[s.name] = float(total / max(1, count))
                finally:
                    pl_module.train(was_training)
                return out

        return _Callback()


def _null():
    import contextlib

    return contextlib.nullcontext()
