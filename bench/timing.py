"""Callbacks that time a Lightning run from the inside, for the benchmarks.

Instances register themselves in RESULTS so a benchmark can read them after ``train(cfg)``
built and ran them from the config (``+callbacks.step_timer._target_=bench.timing.StepTimer``).
"""

from __future__ import annotations

import time

import lightning.pytorch as pl
import torch

RESULTS: dict[str, pl.Callback] = {}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(pl.Callback):
    """Mean wall time per optimizer step over steps [warmup, end), synchronising only twice."""

    def __init__(self, warmup: int = 5, out: str | None = None) -> None:
        self.warmup, self.out = warmup, out
        self.intervals: list[float] = []  # batch end to batch end, each step after warm-up
        self.t0: float | None = None
        self.t1: float | None = None
        self.steps = 0
        self.data_wait = 0.0
        self._batch_end: float | None = None
        self.peak_memory_gb: float | None = None
        self._after_val = False
        RESULTS["step_timer"] = self

    def on_train_start(self, trainer, pl_module) -> None:
        # Time spent blocked in the dataloader's next(): Lightning brackets exactly that call
        # with these two epoch-loop methods (its profiler's "train_dataloader_next").
        loop = trainer.fit_loop.epoch_loop
        before, after = loop._on_before_fetch, loop._on_after_fetch
        started = [0.0]

        def _before():
            started[0] = time.perf_counter()
            before()

        def _after():
            after()
            if self.t0 is not None:
                self.data_wait += time.perf_counter() - started[0]

        loop._on_before_fetch, loop._on_after_fetch = _before, _after

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.warmup and self.t0 is None:
            _sync(pl_module.device)
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.t0 is not None:
            if trainer.global_step >= trainer.max_steps:
                _sync(pl_module.device)  # the last step's kernels must be finished
            self.steps = trainer.global_step - self.warmup
            now = time.perf_counter()
            # The interval after a validation contains it: left out of the median, as nanoGPT's
            # evaluating iterations are left out of its side (bench/nanogpt.py).
            if self._batch_end is not None and not self._after_val:
                self.intervals.append(now - self._batch_end)
            self._after_val = False
            self._batch_end = now

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._after_val = True

    def on_train_end(self, trainer, pl_module) -> None:
        _sync(pl_module.device)
        if pl_module.device.type == "cuda":
            self.peak_memory_gb = torch.cuda.max_memory_allocated(pl_module.device) / 2**30
        self.t1 = time.perf_counter() if self._batch_end is None else self._batch_end
        if self.out:
            import json

            with open(self.out, "w") as f:
                json.dump({"ms_per_step": self.ms_per_step, "median_ms": self.median_ms,
                           "data_wait_fraction": self.data_wait_fraction, "steps": self.steps}, f)

    @property
    def median_ms(self) -> float:
        """Median step-to-step time: like nanoGPT's per-iteration dt, evaluations fall outside it."""
        if not self.intervals:
            return float("nan")
        v = sorted(self.intervals)
        return 1000.0 * v[len(v) // 2]

    @property
    def ms_per_step(self) -> float:
        return 1000.0 * (self.t1 - self.t0) / max(1, self.steps)

    @property
    def data_wait_fraction(self) -> float:
        return self.data_wait / max(1e-9, self.t1 - self.t0)


class ValCurve(pl.Callback):
    """Wall-clock time (``time.time()``), optimizer step, training tokens so far and val/loss at every
    validation, written to ``out`` as JSON.

    The benchmark subtracts its own process-start time, so times to a target loss include start-up.
    """

    def __init__(self, out: str) -> None:
        self.out = out
        self.points: list[dict] = []
        self.tokens = 0  # training input tokens so far (this process), for tokens to a target

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.tokens += int(batch["input_ids"].numel())

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or "val/loss" not in trainer.callback_metrics:
            return
        import json

        self.points.append({"step": trainer.global_step, "t": time.time(), "tokens": self.tokens,
                            "val_loss": float(trainer.callback_metrics["val/loss"])})
        with open(self.out, "w") as f:
            json.dump(self.points, f)


class StopAtLoss(pl.Callback):
    """Ends the run at the first validation whose val/loss is at or below ``loss`` (the ablation's
    target: a variant's figures to the target are all it needs, the rest of its schedule is not run)."""

    def __init__(self, loss: float) -> None:
        self.loss = float(loss)

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get("val/loss")
        if not trainer.sanity_checking and value is not None and float(value) <= self.loss:
            trainer.should_stop = True
