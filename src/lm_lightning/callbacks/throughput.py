"""Throughput: samples/s, tokens/s and MFU over log intervals, the start-up time, the lr.

Measured over log intervals (no per-step host syncs); validation time is not training time.
The progress bar and the plain lines show what is logged here; ``summary.json`` takes the run
totals (:meth:`Throughput.summary`).
"""

from __future__ import annotations

import logging
import os
import time

import lightning.pytorch as pl

from lm_lightning.callbacks.protocols import CountsFlops

log = logging.getLogger("lm_lightning")
_IMPORT_TIME = time.time()


def seconds_since_process_start() -> float:
    """Wall time since this process started (Linux /proc), else since this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time() - _IMPORT_TIME


# Dense bf16 peak FLOP/s by device name, for MFU. Unknown devices report no MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "RTX 3060": 51e12,
              "GTX 1660": 10e12}


def device_peak_flops(device) -> float | None:
    import torch

    if getattr(device, "type", None) != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


class Throughput(pl.Callback):
    """Samples/s and tokens/s over each log interval, plus run totals for ``summary.json``.

    Time spent in validation is excluded, so the figure is training throughput.
    """

    def __init__(self, log_every_n_steps: int = 20) -> None:
        self.log_every_n_steps = max(1, log_every_n_steps)
        self.total_samples = 0
        self.total_tokens = 0
        self.train_seconds = 0.0
        self._interval_start: float | None = None
        self._interval_samples = 0
        self._interval_tokens = 0
        self._batches = 0
        self.startup_s: float | None = None
        self._mfu_per_token: float | None = None  # FLOPs per token / device peak, once known
        self.last: dict[str, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._interval_start is None:
            self._interval_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ids = batch["input_ids"]
        samples, tokens = ids.shape[0], ids.numel()
        self._interval_samples += samples
        self._interval_tokens += tokens
        self.total_samples += samples * trainer.world_size
        self.total_tokens += tokens * trainer.world_size
        self._batches += 1
        if self._batches == 1:
            self.startup_s = seconds_since_process_start()
            log.info("start-up: first training step done %.1f s after launch", self.startup_s)
        if self._batches % (self.log_every_n_steps * trainer.accumulate_grad_batches) == 0:
            self._flush(trainer, pl_module)

    def _flush(self, trainer, pl_module) -> None:
        if self._interval_start is None:
            return
        dt = time.perf_counter() - self._interval_start
        self.train_seconds += dt
        if dt > 0 and self._interval_samples:
            world = trainer.world_size
            self.last = {
                "train/samples_per_s": self._interval_samples * world / dt,
                "train/tokens_per_s": self._interval_tokens * world / dt,
            }
            pl_module.log("train/samples_per_s", self.last["train/samples_per_s"])
            pl_module.log("train/tokens_per_s", self.last["train/tokens_per_s"])
            if self._mfu_per_token is None:
                peak = device_peak_flops(pl_module.device)
                fpt = pl_module.flops_per_token() if peak and isinstance(pl_module, CountsFlops) else 0.0
                self._mfu_per_token = fpt / peak if peak else 0.0
            if self._mfu_per_token:
                # Per device: tokens_per_s counts every rank, the peak is one GPU's.
                self.last["train/mfu"] = self.last["train/tokens_per_s"] * self._mfu_per_token / world
                pl_module.log("train/mfu", self.last["train/mfu"])
        self._interval_start, self._interval_samples, self._interval_tokens = None, 0, 0

    def on_validation_start(self, trainer, pl_module) -> None:
        # Close the running interval so that validation time is not counted as training.
        if self._interval_start is not None:
            self.train_seconds += time.perf_counter() - self._interval_start
            self._interval_start = None
            self._interval_samples = self._interval_tokens = 0

    def on_train_end(self, trainer, pl_module) -> None:
        if self._interval_start is not None:
            self.train_seconds += time.perf_counter() - self._interval_start
            self._interval_start = None

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.startup_s is not None:
            out["startup_s"] = self.startup_s
        if self.train_seconds > 0:
            out["samples_per_s"] = self.total_samples / self.train_seconds
            out["tokens_per_s"] = self.total_tokens / self.train_seconds
        return out


class LearningRate(pl.Callback):
    """Logs the learning rate at log intervals and shows it in the progress bar."""

    def __init__(self, log_every_n_steps: int = 20) -> None:
        self.log_every_n_steps = max(1, log_every_n_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.optimizers and (trainer.global_step % self.log_every_n_steps == 0 or trainer.global_step == 1):
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            pl_module.log("train/learning_rate", lr)
