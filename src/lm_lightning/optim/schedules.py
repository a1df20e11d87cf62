"""Learning-rate schedules: one warmup, then the decay that each schedule names.

Schedulers come from Hydra as ``_partial_`` factories (``conf/scheduler/*``) called with the
optimizer and ``total_steps``. Each LambdaLR schedule's multiplier is a :class:`WarmupCosine`
(or a subclass): the linear warmup is written once, in :meth:`WarmupCosine.__call__`, and a
subclass only says what comes after it (:meth:`~WarmupCosine.after_warmup`). Every multiplier
can be resized (:meth:`~WarmupCosine.resize`, fit_to_time) and re-fitted to a resumed run's new
horizon (:meth:`~WarmupCosine.refit_to`, :func:`refit_schedule`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau


def _base_lr(optimizer: torch.optim.Optimizer) -> float:
    # With layer-wise decay param_groups[0] is the embeddings' scaled lr; the constructor's lr is the top.
    return float(optimizer.defaults.get("lr", optimizer.param_groups[0]["lr"]))


class WarmupCosine:
    """Multiplier for LambdaLR: linear warmup to 1, then cosine decay to ``floor``.

    A plain callable object (not a lambda) so that LambdaLR can store its state in checkpoints.
    """

    def __init__(self, warmup_steps: int, total_steps: int, floor: float) -> None:
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(1, int(total_steps))
        self.floor = float(floor)
        # Plain attributes, so that LambdaLR's state_dict carries them into checkpoints (one
        # written before they existed loads over these defaults).
        self.fitted = False  # resized by fit_to_time: a resume's new horizon leaves it alone
        self.refit: tuple[int, float] | None = None  # (step, multiplier) a re-fitted decay starts from

    def __call__(self, step: int) -> float:
        if self.refit is not None and step >= self.refit[0]:
            return self._refitted(step)
        if step < self.warmup_steps:  # the one warmup of every schedule here
            return (step + 1) / (self.warmup_steps + 1)
        return self.after_warmup(step)

    def _progress(self, step: int) -> float:
        """How far into the decay (0..1) ``step`` is, the decay running from warmup to the end."""
        return min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))

    def after_warmup(self, step: int) -> float:
        return self.floor + (1.0 - self.floor) * self.left(self._progress(step))

    def resize(self, total_steps: int) -> None:
        """End the schedule at ``total_steps`` from now on (fit_to_time, once the throughput is
        known; never before the warmup has ended). A later resume's new horizon leaves it alone."""
        self.total_steps, self.fitted = max(int(total_steps), self.warmup_steps + 1), True

    # -- a new horizon for a resumed run ----------------------------------------------------
    def left(self, progress: float) -> float:
        """The share of the decay still ahead at ``progress`` (0..1) of it: this schedule's shape."""
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def _refitted(self, step: int) -> float:
        start, value = self.refit
        progress = min(1.0, (step - start) / max(1, self.total_steps - start))
        return self.floor + (value - self.floor) * self.left(progress)

    def refit_to(self, step: int, total_steps: int) -> float | None:
        """End at ``total_steps`` instead, carrying on from ``step`` without a jump: from the
        multiplier it has at ``step``, the same shape of decay to ``floor`` over the steps left.
        Within the warmup (or WSD's stable stage) only the end moves. Returns the multiplier
        at ``step``; None when nothing changes. The state is plain attributes, so LambdaLR's
        state_dict carries it into the next checkpoint."""
        total_steps = int(total_steps)
        if total_steps == self.total_steps or total_steps <= step:
            return None
        value = self(step)
        if step < self.warmup_steps or self._stable_at(step, total_steps):
            self.total_steps, self.refit = total_steps, None
        else:
            self.total_steps, self.refit = total_steps, (int(step), float(value))
        return value

    def _stable_at(self, step: int, total_steps: int) -> bool:
        return False


class WarmupLinear(WarmupCosine):
    """Linear warmup to 1, then linear decay to ``floor`` at ``total_steps``."""

    def left(self, progress: float) -> float:
        return 1.0 - progress

    def after_warmup(self, step: int) -> float:
        return 1.0 - (1.0 - self.floor) * self._progress(step)


class WarmupConstant(WarmupCosine):
    """Linear warmup to 1, then constant."""

    def after_warmup(self, step: int) -> float:
        return 1.0

    def _stable_at(self, step: int, total_steps: int) -> bool:
        return True  # nothing decays: only the end moves


class WarmupStableDecay(WarmupCosine):
    """WSD: linear warmup to 1, constant, then decay to ``floor`` over the last ``decay_fraction``
    of ``total_steps`` (never into the warmup). ``shape``: linear, cosine or 1-sqrt (1 - sqrt(progress)).

    The decay start is derived from ``total_steps``, so fit_to_time (which resizes
    ``total_steps``) moves it: the decay then ends at the time budget.
    """

    SHAPES = ("linear", "cosine", "1-sqrt")

    def __init__(self, warmup_steps: int, total_steps: int, floor: float, decay_fraction: float = 0.2,
                 shape: str = "linear") -> None:
        super().__init__(warmup_steps, total_steps, floor)
        self.check(decay_fraction, shape)
        self.decay_fraction, self.shape = float(decay_fraction), str(shape)

    @classmethod
    def check(cls, decay_fraction: Any, shape: Any) -> None:
        if not 0.0 < float(decay_fraction) <= 1.0:
            raise ValueError(f"scheduler.decay_fraction must be in (0, 1], got {decay_fraction}")
        if shape not in cls.SHAPES:
            raise ValueError(f"scheduler.shape must be one of {', '.join(cls.SHAPES)}, got {shape!r}")

    @property
    def decay_start(self) -> int:
        return max(self.warmup_steps, self.total_steps - round(self.decay_fraction * self.total_steps))

    def after_warmup(self, step: int) -> float:
        start = self.decay_start
        if step < start:
            return 1.0
        progress = min(1.0, (step - start) / max(1, self.total_steps - start))
        return self.floor + (1.0 - self.floor) * self.left(progress)

    def left(self, progress: float) -> float:
        if self.shape == "linear":
            return 1.0 - progress
        if self.shape == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - math.sqrt(progress)

    def _stable_at(self, step: int, total_steps: int) -> bool:
        # Before the new horizon's decay start the run is (again) in the stable stage.
        return step < max(self.warmup_steps, total_steps - round(self.decay_fraction * total_steps))


def _floor(optimizer: torch.optim.Optimizer, min_lr: float | None, min_lr_ratio: float) -> float:
    base_lr = _base_lr(optimizer)
    floor = (min_lr / base_lr) if min_lr is not None else min_lr_ratio
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"scheduler.min_lr ({min_lr}) must lie between 0 and optimizer.lr ({base_lr})")
    return floor


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 100,
                  min_lr: float | None = None, min_lr_ratio: float = 0.1) -> LambdaLR:
    """Linear warmup then cosine decay to ``min_lr`` (absolute) or ``min_lr_ratio`` * lr."""
    return LambdaLR(optimizer, WarmupCosine(warmup_steps, total_steps, _floor(optimizer, min_lr, min_lr_ratio)))


def warmup_linear(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 100,
                  min_lr: float | None = None, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warmup then linear decay to ``min_lr`` (absolute) or ``min_lr_ratio`` * lr."""
    return LambdaLR(optimizer, WarmupLinear(warmup_steps, total_steps, _floor(optimizer, min_lr, min_lr_ratio)))


def wsd(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 50, decay_fraction: float = 0.2,
        shape: str = "linear", min_lr: float | None = None, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Warmup, a constant stage, then decay over the last ``decay_fraction`` of the steps."""
    return LambdaLR(optimizer, WarmupStableDecay(warmup_steps, total_steps, _floor(optimizer, min_lr, min_lr_ratio),
                                                 decay_fraction, shape))


def check_scheduler(sched_cfg: Mapping[str, Any] | None) -> None:
    """Validate schedule values before any expensive work (raises ValueError)."""
    from lm_lightning.optim.targets import check_target_keys

    check_target_keys("scheduler", sched_cfg, skip=2)  # the builder passes (optimizer, total_steps)
    if sched_cfg and str(sched_cfg.get("_target_", "")).endswith(".wsd"):
        WarmupStableDecay.check(sched_cfg.get("decay_fraction", 0.2), sched_cfg.get("shape", "linear"))


def constant(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0) -> LambdaLR:
    """Constant learning rate after an optional linear warmup."""
    return LambdaLR(optimizer, WarmupConstant(warmup_steps, total_steps, 1.0))


def plateau(optimizer: torch.optim.Optimizer, total_steps: int, monitor: str, mode: str = "min",
            factor: float = 0.5, patience: int = 2, threshold: float = 1e-4,
            min_lr: float = 0.0) -> ReduceLROnPlateau:
    """Reduce the lr by ``factor`` after ``patience`` validations without improvement of ``monitor``.

    ``total_steps`` is accepted for a uniform factory signature and ignored.
    """
    if not monitor:
        raise ValueError("scheduler=plateau needs scheduler.monitor (a logged metric such as val/loss)")
    sched = ReduceLROnPlateau(optimizer, mode=mode, factor=factor, patience=patience,
                              threshold=threshold, min_lr=min_lr)
    sched.monitor = monitor  # read by lightning_scheduler() to fill Lightning's config
    return sched


def lightning_scheduler(scheduler: Any, trainer: Any) -> dict[str, Any]:
    """The lr_scheduler entry Lightning wants: per step, or after each validation for plateau."""
    if not isinstance(scheduler, ReduceLROnPlateau):
        return {"scheduler": scheduler, "interval": "step"}
    val_every = getattr(trainer, "val_check_interval", None) if trainer is not None else None
    by_steps = trainer is not None and getattr(trainer, "check_val_every_n_epoch", 1) is None
    if by_steps and isinstance(val_every, int):
        # Validation runs every `val_every` micro-batches: step right after it, when the metric is fresh.
        return {"scheduler": scheduler, "monitor": scheduler.monitor, "interval": "step",
                "frequency": val_every, "strict": True}
    every = getattr(trainer, "check_val_every_n_epoch", 1) or 1
    return {"scheduler": scheduler, "monitor": scheduler.monitor, "interval": "epoch",
            "frequency": int(every), "strict": True}


def refit_schedule(trainer: Any, total_steps: int) -> str | None:
    """After a resume: when the run's horizon (``trainer.max_steps``, or the steps of
    ``max_epochs``) differs from the one the restored schedule was sized for, re-fit it to end
    there, carrying on from the current step (:meth:`WarmupCosine.refit_to`). The same horizon
    changes nothing, so such a resume stays bitwise exact. A schedule resized by fit_to_time is
    left alone. Returns the line to print, or None."""
    for config in getattr(trainer, "lr_scheduler_configs", []):
        sched = config.scheduler
        fns = {id(fn): fn for fn in getattr(sched, "lr_lambdas", []) if isinstance(fn, WarmupCosine)}
        for fn in fns.values():
            if fn.fitted:
                continue
            old, step = fn.total_steps, int(sched.last_epoch)
            value = fn.refit_to(step, total_steps)
            if value is None:
                continue
            try:
                lr = f"{_base_lr(sched.optimizer) * value:.3g}"
            except (AttributeError, KeyError, IndexError):
                lr = f"x{value:.3g}"
            return (f"lr schedule: the run now ends at step {total_steps} (was {old}); re-fitted from step "
                    f"{step} (lr {lr}) to reach its end there")
    return None
