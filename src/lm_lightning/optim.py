"""Parameter groups and learning-rate schedules.

Optimizers and schedulers come from Hydra as ``_partial_`` factories; this module decides
which parameters get weight decay and what the schedule looks like over optimizer steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices only: Linear and Embedding weights; biases and norm weights
    are excluded.

    Chosen by module type rather than ``p.dim() >= 2`` because under FSDP the optimizer sees
    flattened 1-D shards of every weight. Tied weights appear once (``named_parameters``
    de-duplicates shared tensors).
    """
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if id(p) in matrices else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(factory: Callable[..., torch.optim.Optimizer], model: torch.nn.Module,
                    device: torch.device, allow_fused: bool = True) -> torch.optim.Optimizer:
    """Call a (partial) optimizer factory with decay/no-decay groups; fused AdamW on CUDA.

    ``allow_fused=False`` under fp16 loss scaling: a fused optimizer unscales gradients inside
    its step, after clipping would already have seen them scaled.
    """
    keywords = dict(getattr(factory, "keywords", {}) or {})
    lr = keywords.get("lr")
    if lr is not None and not float(lr) > 0:
        raise ValueError(f"optimizer.lr must be positive, got {lr}")
    groups = param_groups(model, float(keywords.get("weight_decay", 0.0)))
    extra: dict[str, Any] = {}
    target = getattr(factory, "func", factory)
    if target in (torch.optim.AdamW, torch.optim.Adam) and keywords.get("fused") is None:
        # Fused kernels: one launch for all parameters instead of a loop per tensor.
        extra["fused"] = allow_fused and device.type == "cuda"
    return factory(groups, **extra)


class WarmupCosine:
    """Multiplier for LambdaLR: linear warmup to 1, then cosine decay to ``floor``.

    A plain callable object (not a lambda) so that LambdaLR can store its state in checkpoints.
    """

    def __init__(self, warmup_steps: int, total_steps: int, floor: float) -> None:
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(1, int(total_steps))
        self.floor = float(floor)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 100,
                  min_lr: float | None = None, min_lr_ratio: float = 0.1) -> LambdaLR:
    """Linear warmup then cosine decay to ``min_lr`` (absolute) or ``min_lr_ratio`` * lr."""
    base_lr = optimizer.param_groups[0]["lr"]
    floor = (min_lr / base_lr) if min_lr is not None else min_lr_ratio
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"scheduler.min_lr ({min_lr}) must lie between 0 and optimizer.lr ({base_lr})")
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, floor))
