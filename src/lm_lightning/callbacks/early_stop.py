"""Early stopping on a validation metric: patience/min_delta, and a target value (`stop_at`).

Lightning's EarlyStopping does the bookkeeping; this subclass is inert unless configured, and
records why it stopped so that the run ends through the same path as a `stop` command: a
checkpoint at the current step, exit 0, ``summary.json`` status ``stopped``.
"""

from __future__ import annotations

import logging

from lightning.pytorch.callbacks import EarlyStopping

from lm_lightning.callbacks.alerts import announce
from lm_lightning.callbacks.protocols import SavesNow

log = logging.getLogger("lm_lightning")


class EarlyStop(EarlyStopping):
    def __init__(self, monitor: str = "val/loss", mode: str = "min", patience: int | None = None,
                 min_delta: float = 0.0, stop_at: float | None = None) -> None:
        # patience None: no patience rule (a huge patience never triggers).
        super().__init__(monitor=monitor, mode=mode, min_delta=float(min_delta or 0.0),
                         patience=int(patience) if patience is not None else 2**62,
                         stopping_threshold=None if stop_at is None else float(stop_at),
                         check_finite=False, strict=False, check_on_train_epoch_end=False, verbose=False)
        self.enabled = patience is not None or stop_at is not None
        self.reason: str | None = None

    def _run_early_stopping_check(self, trainer) -> None:
        if not self.enabled or self.reason is not None:
            return
        before = trainer.should_stop
        super()._run_early_stopping_check(trainer)
        if trainer.should_stop and not before:
            target = self.stopping_threshold is not None and self.monitor_op(
                trainer.callback_metrics[self.monitor].squeeze(), self.stopping_threshold)
            self.reason = "target_reached" if target else "early_stopping"
            ckpt = trainer.checkpoint_callback
            if isinstance(ckpt, SavesNow):
                ckpt.save_now(trainer, trainer.lightning_module, self.reason)
            if trainer.is_global_zero:
                msg = f"{self.reason}: {self.monitor}={float(trainer.callback_metrics[self.monitor]):.4f} " \
                      f"at step {trainer.global_step}"
                print(msg, flush=True)
                log.info(msg)
                announce(trainer, "stop", msg)
