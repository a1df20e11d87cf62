"""Progress display: the rich bar in a terminal, plain lines everywhere else.

The rich bar gets a finite total from ``max_steps`` so that it can show an ETA for endless
streams, and shows the loss, learning rate and throughput (:mod:`.throughput` measures it);
:class:`PlainProgress` writes the guides' one-line-per-interval form to train.log and to a
stdout that is not a terminal.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import RichProgressBarTheme

from lm_lightning.callbacks.protocols import WeighsObjectives, schedules
from lm_lightning.lit.metrics import current_metrics

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
    fn = next(iter(schedules(trainer)), None)
    if fn is not None and fn.warmup_steps and total:
        text += f"; lr warmup {fn.warmup_steps:,} steps = {fn.warmup_steps / total:.0%} of the run"
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
            objectives = sorted(pl_module.loss_weights if isinstance(pl_module, WeighsObjectives) else {},
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
