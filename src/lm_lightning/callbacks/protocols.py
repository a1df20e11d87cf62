"""The written contracts between the parts of a run: who saves, who stops, who listens, who measures.

The module, the callbacks and the lr schedules never hold references to each other: they meet
at the Lightning Trainer. Where one part needs another, it looks for the contract below (among
``trainer.callbacks``, at the module, at a scheduler's multiplier) with ``isinstance``, never by
probing for a method name. Each contract is a ``runtime_checkable`` Protocol: a part fulfils it
by having the members; it does not import this module.

Contract (fulfilled by -> relied on by):

- :class:`SavesNow` (``checkpointing.Checkpointing`` -> ``control.RunControl``, ``early_stop.EarlyStop``);
- :class:`StopsRun` (``RunControl``, ``EarlyStop``, ``anomaly.AnomalyGuard`` -> ``control.run_outcome``,
  which turns the reason into the summary status and the exit code, :data:`STOP_OUTCOMES`);
- :class:`DataAnomalyListener` (``AnomalyGuard``, ``alerts.Alerts`` -> ``LMModule``, per batch with anomalies);
- :class:`RunEventListener` (``Alerts`` -> ``alerts.announce``);
- :class:`GradNormSource` (``LMModule`` -> ``AnomalyGuard``, ``monitoring.Monitoring``);
- :class:`ResizableSchedule` (``optim.schedules.WarmupCosine`` and its subclasses -> ``RunControl``'s
  fit_to_time, ``progress.horizon_text``);
- :class:`CountsFlops` (``LMModule`` -> ``throughput.Throughput``'s MFU, ``model_summary.ModelSummary``);
- :class:`WeighsObjectives` (``LMModule`` -> ``progress.PlainProgress``'s loss parts).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

# Why a run stopped early, and what that means for summary.json's status and the exit code.
StopReason = Literal["stop", "SIGTERM", "SIGINT", "time_limit", "early_stopping", "target_reached", "anomaly"]
STOP_OUTCOMES: dict[str, tuple[str, int]] = {
    "stop": ("stopped", 0),  # the `stop` command on stdin (RunControl)
    "SIGTERM": ("stopped", 143),  # RunControl, after checkpointing
    "SIGINT": ("stopped", 130),  # RunControl, after checkpointing
    "time_limit": ("time_limit", 0),  # trainer.max_time / max_training_hours (RunControl)
    "early_stopping": ("stopped", 0),  # patience ran out (EarlyStop)
    "target_reached": ("stopped", 0),  # the monitored metric reached stop_at (EarlyStop)
    "anomaly": ("stopped", 0),  # non-finite steps or policy stop (AnomalyGuard)
}


@runtime_checkable
class SavesNow(Protocol):
    """Can checkpoint the current optimizer step on request (a stop, a signal, a time limit).

    ``trainer.checkpoint_callback`` is asked; a run without one (``~callbacks.checkpointing``)
    stops without a checkpoint.
    """

    def save_now(self, trainer: Any, pl_module: Any, why: str = "requested") -> Path | None:
        """Write the checkpoint of this step and point ``last`` at it; its path, or None when
        nothing was written (a fast_dev_run, weights that are not finite)."""


@runtime_checkable
class StopsRun(Protocol):
    """Can end the run early. ``reason`` stays None until it does; then it is one of
    :data:`StopReason`, which :data:`STOP_OUTCOMES` turns into the summary status and exit code."""

    reason: str | None


@runtime_checkable
class DataAnomalyListener(Protocol):
    """Wants the anomalies the data itself reports (Collatz: step cap reached, a cycle found).

    The module calls every such callback with the batch's ``anomalies`` list, once per batch
    that has any.
    """

    def on_data_anomaly(self, trainer: Any, pl_module: Any, anomalies: list[dict[str, Any]]) -> None: ...


@runtime_checkable
class RunEventListener(Protocol):
    """Wants the run's notable events as one line each (``kind``: stop, time_limit, anomaly)."""

    def on_run_event(self, trainer: Any, kind: str, message: str) -> None: ...


@runtime_checkable
class GradNormSource(Protocol):
    """Has this step's total gradient norm before clipping, computed once per backward and
    shared (a device tensor, no host sync); None when there are no gradients."""

    def grad_norm(self) -> torch.Tensor | None: ...


@runtime_checkable
class ResizableSchedule(Protocol):
    """An lr multiplier (LambdaLR's ``lr_lambda``) with a warmup and an end that can move.

    ``resize(total_steps)`` makes the schedule end at ``total_steps`` (fit_to_time, once the
    throughput is known) and sets ``fitted``, so that a resumed run's new horizon leaves it alone.
    """

    warmup_steps: int
    total_steps: int
    fitted: bool

    def resize(self, total_steps: int) -> None: ...


@runtime_checkable
class CountsFlops(Protocol):
    """Knows the training FLOPs per token of its model (forward and backward)."""

    def flops_per_token(self) -> float: ...


@runtime_checkable
class WeighsObjectives(Protocol):
    """Trains named objectives (``next_token``, ``stopping_time``) with these loss weights."""

    loss_weights: dict[str, float]


def listeners(trainer: Any, contract: type) -> list[Any]:
    """The trainer's callbacks that fulfil ``contract`` (none before a trainer exists)."""
    return [cb for cb in (trainer.callbacks if trainer is not None else []) if isinstance(cb, contract)]


def schedules(trainer: Any) -> list[ResizableSchedule]:
    """The resizable multipliers behind the trainer's LambdaLR schedulers, first scheduler first."""
    # Probes on Lightning's trainer and torch's schedulers only: lr_lambdas is LambdaLR's
    # attribute, which ReduceLROnPlateau does not have.
    return [fn for config in getattr(trainer, "lr_scheduler_configs", [])
            for fn in getattr(config.scheduler, "lr_lambdas", []) if isinstance(fn, ResizableSchedule)]
