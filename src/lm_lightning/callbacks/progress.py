"""Progress display and throughput measurement.

Throughput is measured over log intervals (no per-step host syncs) and shown in the progress
bar next to the loss and learning rate. The rich bar gets a finite total from ``max_steps``
so that it can show an ETA for endless streams.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBarTheme

from lm_lightning.metrics import current_metrics

# What the bar shows, with short names that keep it on one line.
BAR_METRICS = {"train/loss": "loss", "train/learning_rate": "lr", "train/samples_per_s": "samples/s",
               "val/loss": "val_loss"}


class ProgressBar(RichProgressBar):
    def __init__(self, refresh_rate: int = 10, leave: bool = True) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=leave, theme=RichProgressBarTheme(metrics_format=".4g"))

    def setup(self, trainer, pl_module, stage: str) -> None:
        # A bar is for terminals: a log file or pipe gets PlainProgress's lines, not the bar's frames.
        if not stdout_is_terminal():
            self.disable()
        super().setup(trainer, pl_module, stage)

    # The bar counts optimizer steps, its position and its total alike (Lightning's counts
    # micro-batches against a total that, with accumulation, was optimizer steps: `1060/200`).
    def _step_bounded(self) -> bool:
        trainer = self.trainer
        return trainer.max_steps > 0 and (trainer.max_epochs in (-1, None)
                                          or super().total_train_batches == float("inf"))

    @property
    def total_train_batches(self) -> int | float:
        trainer = self.trainer
        if self._step_bounded():
            return trainer.max_steps  # the run ends there, also for an endless stream
        total = super().total_train_batches  # micro-batches per epoch
        if total == float("inf"):
            return total
        return -(-int(total) // max(1, trainer.accumulate_grad_batches))

    def _position(self, trainer, batch_idx: int) -> int:
        if self._step_bounded():
            return trainer.global_step
        return (batch_idx + 1) // max(1, trainer.accumulate_grad_batches)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Lightning's rich bar reads every progress-bar metric on every batch, and reading a
        # logged tensor is a host-device sync. Update (and so sync) only every refresh_rate
        # batches, and on the last one.
        last = trainer.max_steps > 0 and trainer.global_step >= trainer.max_steps
        if (batch_idx + 1) % max(1, self.refresh_rate) == 0 or last:
            if not self.is_disabled and self.train_progress_bar_id is None:
                self._initialize_train_progress_bar_id()  # a mid-epoch resume
            self._update(self.train_progress_bar_id, self._position(trainer, batch_idx))
            self._update_metrics(trainer, pl_module)
            self.refresh()

    def get_metrics(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        out: dict[str, Any] = {"step": trainer.global_step}
        out.update(items)
        # Lightning converts every prog_bar=True metric to a Python number after *every*
        # batch (a host sync each step), so the product logs with prog_bar=False and the bar
        # reads these from callback_metrics itself, only when it refreshes.
        metrics = current_metrics(trainer)
        for key, short in BAR_METRICS.items():
            if key in metrics:
                value = metrics[key]
                out[short] = value.item() if hasattr(value, "item") else value
        return out

    def _get_train_description(self, current_epoch: int) -> str:
        # "Epoch 0/-2" means nothing for a step-bounded run (also after a mid-epoch resume): "train".
        if self.trainer.max_epochs in (-1, None):
            return "train"
        return super()._get_train_description(current_epoch)


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
                model = getattr(pl_module, "model", None)
                peak = device_peak_flops(pl_module.device)
                fpt = model.flops_per_token() if peak and hasattr(model, "flops_per_token") else 0.0
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


# -- plain lines: what a log file, a pipe, nohup or SLURM gets ------------------------------------
# Short names of the loss parts in the progress line (Collatz as its guide prints them).
PART_NAMES = {"stopping_time": "Stop", "next_token": "Seq"}


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def announce_line(msg: str) -> None:
    """One plain line: always to train.log; to stdout too when stdout is not a terminal (a log
    file, a pipe, nohup, SLURM), where the rich bar cannot draw. Callers are rank 0."""
    log.info(msg)
    if not stdout_is_terminal():
        print(msg, flush=True)


def _fmt_elapsed(seconds: float) -> str:
    s = max(0, int(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def data_sizes(datamodule: Any) -> str | None:
    """``Train data: N tokens | Validation data: M tokens`` where the data module can tell."""
    if datamodule is None:
        return None
    return " | ".join(datamodule.size_lines()) or None


def horizon_text(trainer) -> str:
    """``max steps 600``, or for an epoch-bounded run ``max epochs 10: 293 steps per epoch, 2930
    steps in all``; then the warmup as a share of the run, when the schedule has one."""
    import math

    accumulate = max(1, trainer.accumulate_grad_batches)
    batches = trainer.num_training_batches
    total = None
    if trainer.max_steps > 0:
        text, total = f"max steps {trainer.max_steps}", trainer.max_steps
    else:
        text = f"max epochs {trainer.max_epochs}"
        if batches not in (None, float("inf")) and trainer.max_epochs not in (None, -1):
            per_epoch = math.ceil(batches / accumulate)
            total = per_epoch * trainer.max_epochs
            text += f": {per_epoch:,} steps per epoch, {total:,} steps in all"
    for config in getattr(trainer, "lr_scheduler_configs", []):
        fn = next((f for f in getattr(config.scheduler, "lr_lambdas", []) if hasattr(f, "warmup_steps")), None)
        if fn is not None and fn.warmup_steps and total:
            text += f"; lr warmup {fn.warmup_steps:,} steps = {fn.warmup_steps / total:.0%} of the run"
        break
    return text


class PlainProgress(pl.Callback):
    """Plain progress lines, one per log interval, for train.log and (when it is not a terminal)
    stdout, in the guides' form::

        Step 100 | Loss: 0.3698 (Stop: 0.0003, Seq: 0.3695) | LR: 4.13e-05 | Time: 2.68s | Elapsed: 0:00:27 | Tokens/s: 113,024

    plus the data sizes at the start, a line per evaluation and a line per checkpoint written
    (lm_lightning's own and Lightning's ModelCheckpoint). Values are read from the device only
    at those lines (one host sync per log interval), never per step.
    """

    def __init__(self, log_every_n_steps: int = 20) -> None:
        self.log_every_n_steps = max(1, int(log_every_n_steps))
        self._start = time.monotonic()
        self._t0: float | None = None
        self._paused = 0.0
        self._val_start: float | None = None
        self._tokens = 0
        self._seen_ckpts: dict[int, str] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self._start = time.monotonic()
        self._t0, self._paused, self._tokens = None, 0.0, 0
        if not trainer.is_global_zero:
            return
        sizes = data_sizes(trainer.datamodule)
        if sizes:
            announce_line(sizes)
        announce_line(f"Starting training from step {trainer.global_step} ({horizon_text(trainer)})")
        for cb in trainer.checkpoint_callbacks:  # files from before this start are not news
            self._seen_ckpts[id(cb)] = str(getattr(cb, "_last_checkpoint_saved", "") or "")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._t0, self._paused = time.perf_counter(), 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        if ids is not None:
            self._tokens += int(ids.numel()) * trainer.world_size  # shape only: no sync
        if not trainer.is_global_zero:
            return
        self._announce_model_checkpoints(trainer)
        step = trainer.global_step
        if (batch_idx + 1) % trainer.accumulate_grad_batches or step == 0 or step % self.log_every_n_steps:
            return
        announce_line(self.step_line(trainer, pl_module))
        self._t0, self._paused, self._tokens = time.perf_counter(), 0.0, 0

    def step_line(self, trainer, pl_module) -> str:
        metrics = current_metrics(trainer)
        dt = (time.perf_counter() - self._t0 - self._paused) if self._t0 is not None else 0.0
        parts = [f"Step {trainer.global_step}"]
        if "train/loss" in metrics:
            loss = f"Loss: {float(metrics['train/loss']):.4f}"
            objectives = sorted(getattr(pl_module, "loss_weights", {}),
                                key=lambda k: (list(PART_NAMES).index(k) if k in PART_NAMES else len(PART_NAMES), k))
            named = [(PART_NAMES.get(k, k), metrics[f"train/{k}"]) for k in objectives
                     if f"train/{k}" in metrics and len(objectives) > 1]
            if named:
                loss += " (" + ", ".join(f"{n}: {float(v):.4f}" for n, v in named) + ")"
            parts.append(loss)
        if trainer.optimizers:
            parts.append(f"LR: {trainer.optimizers[0].param_groups[0]['lr']:.2e}")
        parts.append(f"Time: {dt:.2f}s")
        parts.append(f"Elapsed: {_fmt_elapsed(time.monotonic() - self._start)}")
        if dt > 0 and self._tokens:
            parts.append(f"Tokens/s: {self._tokens / dt:,.0f}")
        return " | ".join(parts)

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        if self._val_start is not None:
            self._paused += time.perf_counter() - self._val_start  # validation is not training time
            self._val_start = None
        if not trainer.is_global_zero:
            return
        announce_line(self.eval_line(trainer))
        self._announce_model_checkpoints(trainer)

    @staticmethod
    def eval_line(trainer) -> str:
        m = trainer.callback_metrics
        parts = [f"Evaluating at step {trainer.global_step}" + (f" (epoch {trainer.current_epoch + 1})"
                                                                  if trainer.max_epochs not in (None, -1) else "")]
        for key, title in (("eval/train_loss", "Train loss"), ("val/loss", "Val loss"), ("val/ppl", "Val ppl"),
                           ("val/next_token_acc", "Val acc"), ("val/stopping_time_mae", "Val stopping-time MAE")):
            if key in m:
                parts.append(f"{title}: {float(m[key]):.4f}")
        return " | ".join(parts)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._announce_model_checkpoints(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._announce_model_checkpoints(trainer)
            announce_line(f"Training ended at step {trainer.global_step} after "
                          f"{_fmt_elapsed(time.monotonic() - self._start)}")

    def _announce_model_checkpoints(self, trainer) -> None:
        """Lightning's ModelCheckpoint callbacks (recipes' named files): a line per new file.
        lm_lightning's own Checkpointing announces its files itself."""
        for cb in trainer.checkpoint_callbacks:
            path = str(getattr(cb, "_last_checkpoint_saved", "") or "")
            if path and path != self._seen_ckpts.get(id(cb)):
                self._seen_ckpts[id(cb)] = path
                announce_line(f"Saved checkpoint to {path}")
