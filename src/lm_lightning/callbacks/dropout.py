"""Scheduled dropout: move every dropout rate of the model linearly from ``start`` to ``end``.

The guides raise dropout over training (little regularization while the model is far from
fitting, more once it could overfit). Progress is measured in optimizer steps against
``max_steps`` when the run is step-bounded, else in epochs against ``max_epochs``.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch.nn as nn


def set_dropout(model: nn.Module, p: float) -> int:
    """Set ``p`` on every ``nn.Dropout`` and every attention-dropout float; returns how many were set."""
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
            n += 1
        elif isinstance(getattr(m, "dropout", None), float):
            # CausalSelfAttention keeps its attention dropout as a float for scaled_dot_product_attention.
            m.dropout = p
            n += 1
    return n


class ScheduledDropout(pl.Callback):
    def __init__(self, start: float = 0.0, end: float = 0.1, warmup_fraction: float = 0.0) -> None:
        for name, v in (("start", start), ("end", end)):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"callbacks.scheduled_dropout.{name} must be in [0, 1), got {v}")
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"callbacks.scheduled_dropout.warmup_fraction must be in [0, 1), got {warmup_fraction}")
        self.start, self.end, self.warmup_fraction = float(start), float(end), float(warmup_fraction)
        self.current = float(start)

    def progress(self, trainer: pl.Trainer) -> float:
        if trainer.max_steps and trainer.max_steps > 0:
            done = trainer.global_step / trainer.max_steps
        elif trainer.max_epochs and trainer.max_epochs > 0:
            done = trainer.current_epoch / trainer.max_epochs
        else:
            return 0.0
        # Hold `start` for the first warmup_fraction of training, then ramp to `end`.
        return min(1.0, max(0.0, (done - self.warmup_fraction) / (1.0 - self.warmup_fraction)))

    def rate(self, trainer: pl.Trainer) -> float:
        return self.start + (self.end - self.start) * self.progress(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        p = self.rate(trainer)
        if p != self.current or trainer.global_step == 0:
            set_dropout(pl_module, p)
            self.current = p

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % max(1, trainer.log_every_n_steps) == 0:
            pl_module.log("train/dropout", self.current)
