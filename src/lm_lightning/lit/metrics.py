"""The metrics as they stand now, for the progress bar, `status`, alerts and the summary."""

from __future__ import annotations

from typing import Any


def at_log_step(trainer: Any) -> bool:
    """Whether Lightning's loggers write the metrics logged during this batch.

    Lightning's own rule (its logger connector's ``should_update_logs``): a value given to
    ``self.log`` at any other batch is written later, stale, at the next log step.
    """
    if trainer is None:
        return True
    connector = getattr(trainer, "_logger_connector", None)
    if connector is not None and hasattr(type(connector), "should_update_logs"):
        return bool(connector.should_update_logs)
    n = trainer.log_every_n_steps
    return bool(n) and (trainer.global_step + 1) % n == 0


def current_metrics(trainer: Any) -> dict[str, Any]:
    """``trainer.callback_metrics`` with the newest training loss.

    ``train/loss`` reaches Lightning only at log steps (see ``LMModule.training_step``); the
    module keeps the newest one on the device, and this returns it without a sync.
    """
    metrics = dict(trainer.callback_metrics)
    latest = getattr(trainer.lightning_module, "train_loss", None) if trainer.lightning_module is not None else None
    if latest is not None:
        metrics["train/loss"] = latest
    return metrics
