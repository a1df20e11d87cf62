"""Controlling a run while it trains: stdin commands, signals and the time limit.

Every way of ending early goes through one path: record the reason, checkpoint the current
optimizer step, and let Lightning finish the loop (``trainer.should_stop``). ``train()`` then
turns the reason into the summary status and the exit code (SIGTERM 143, SIGINT 130, else 0).

Signal handlers only set a flag; the work happens at the next optimizer-step boundary, on the
training thread. Side effects (printing, alerts) happen on rank 0 only.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import lightning.pytorch as pl

from lm_lightning.callbacks.alerts import announce
from lm_lightning.callbacks.protocols import STOP_OUTCOMES, SavesNow, StopsRun, schedules
from lm_lightning.lit.metrics import current_metrics

log = logging.getLogger("lm_lightning")


def parse_time(value: Any) -> float | None:
    """Seconds from Lightning's max_time forms: "DD:HH:MM:SS", a dict of timedelta fields, or seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict) or hasattr(value, "items"):
        import datetime

        return datetime.timedelta(**{k: float(v) for k, v in dict(value).items()}).total_seconds()
    parts = [float(p) for p in str(value).split(":")]
    if len(parts) != 4:
        raise ValueError(f"trainer.max_time must be DD:HH:MM:SS, got {value!r}")
    d, h, m, s = parts
    return ((d * 24 + h) * 60 + m) * 60 + s


def time_limit_s(max_time: Any = None, max_training_hours: float | None = None) -> float | None:
    limits = [x for x in (parse_time(max_time),
                          None if max_training_hours in (None, "") else float(max_training_hours) * 3600) if x]
    return min(limits) if limits else None


def fmt_s(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class RunControl(pl.Callback):
    """stdin `status`/`stop`, SIGTERM/SIGINT/SIGUSR1, the time limit and ``fit_to_time``.

    ``max_time``/``max_training_hours`` budget this invocation (a resumed run gets a fresh
    budget and carries on toward max_steps). With ``fit_to_time``, throughput is measured over
    the warmup steps and the cosine schedule is resized to end when the time runs out.
    """

    def __init__(self, max_time: Any = None, max_training_hours: float | None = None, stdin: bool = True,
                 signals: bool = True, fit_to_time: bool = False) -> None:
        self.limit_s = time_limit_s(max_time, max_training_hours)
        self.read_stdin, self.handle_signals, self.fit_to_time = stdin, signals, fit_to_time
        self.reason: str | None = None
        self._pending: str | None = None  # set by signal handlers / the stdin thread
        self._status_requested = False
        self._start = time.monotonic()
        self._start_step = 0
        self._old_handlers: dict[int, Any] = {}
        self._thread: threading.Thread | None = None
        self._fit_measure: tuple[int, float] | None = None

    # -- requests (thread- and signal-safe: they only set flags) -------------------------------
    def request_stop(self, reason: str = "stop") -> None:
        if self._pending is None:
            self._pending = reason

    def request_status(self) -> None:
        self._status_requested = True

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGUSR1:
            self.request_status()
            return
        name = signal.Signals(signum).name
        if signum == signal.SIGINT and self._pending is not None:
            raise KeyboardInterrupt  # a second Ctrl-C aborts without waiting for the checkpoint
        self.request_stop(name)

    def _install_signals(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
            if sig not in self._old_handlers:
                self._old_handlers[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._old_handlers = {}

    def _start_stdin_reader(self) -> None:
        if not self.read_stdin or self._thread is not None or sys.stdin is None:
            return
        try:
            fd = sys.stdin.fileno()
            # A background job reading its terminal would be stopped by SIGTTIN: do not read.
            if os.isatty(fd) and os.getpgrp() != os.tcgetpgrp(fd):
                return
        except (OSError, ValueError, AttributeError):
            return  # no real stdin (closed, or replaced by a test harness)
        self._thread = threading.Thread(target=self._read_commands, name="lm-stdin", daemon=True)
        self._thread.start()

    def _read_commands(self) -> None:
        """Blocking reads; EOF (closed stdin, /dev/null, CI) ends the thread: no spinning."""
        try:
            for line in sys.stdin:
                cmd = line.strip().lower()
                if cmd == "stop":
                    self.request_stop("stop")
                elif cmd == "status":
                    self.request_status()
                elif cmd:
                    print(f"unknown command {cmd!r}; commands: status, stop", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass

    # -- hooks -------------------------------------------------------------------------------
    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            self._install_signals()

    def on_train_start(self, trainer, pl_module) -> None:
        # Lightning installs its own SIGTERM handler when fit starts; ours replaces it so that
        # SIGTERM checkpoints instead of raising inside the loop.
        self._install_signals()
        self._start = time.monotonic()
        self._start_step = trainer.global_step
        if trainer.is_global_zero:
            self._start_stdin_reader()
            hints = []
            if self._thread is not None:
                hints.append("type `status` or `stop` + Enter")
            if self._old_handlers:
                hints.append("SIGUSR1: status; SIGTERM/Ctrl-C: checkpoint and stop")
            if self.limit_s is not None:
                hints.append(f"time limit {fmt_s(self.limit_s)}")
            if hints:
                print("control: " + "; ".join(hints), flush=True)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._status_requested:
            self._status_requested = False
            if trainer.is_global_zero:
                print(self.status_line(trainer), flush=True)
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return  # act only on optimizer-step boundaries
        if self.fit_to_time:
            self._maybe_fit_schedule(trainer)
        if self._pending is None and self.limit_s is not None and self.elapsed() >= self.limit_s:
            self._pending = "time_limit"
        if self.reason is not None:
            return
        # One snapshot of the request for this step: a signal handler may set _pending at any
        # moment, also between the vote below and acting on it.
        pending = self._pending
        if trainer.world_size > 1:
            # Only rank 0 reads stdin, and signals may reach one rank: every rank must stop at
            # the same step or the checkpoint's collectives deadlock. One tiny all-reduce per
            # step decides, and every rank acts on the vote, never on a later local flag (a
            # request that lands after the vote is acted on at the next step).
            if not trainer.strategy.reduce_boolean_decision(pending is not None, all=False):
                return
            pending = pending or "stop"
        if pending is not None:
            self._stop(trainer, pl_module, pending)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or self.limit_s is None:
            return
        print(f"time: {fmt_s(self.elapsed())} elapsed, {fmt_s(self.limit_s - self.elapsed())} left "
              f"of {fmt_s(self.limit_s)}", flush=True)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._restore_signals()

    # -- stopping ----------------------------------------------------------------------------
    def _stop(self, trainer: pl.Trainer, pl_module: pl.LightningModule, reason: str) -> None:
        self.reason = reason
        ckpt = trainer.checkpoint_callback
        path = ckpt.save_now(trainer, pl_module, reason) if isinstance(ckpt, SavesNow) else None
        trainer.should_stop = True
        if trainer.is_global_zero:
            where = f", checkpoint {path}" if path else ""
            msg = f"{reason}: stopping at step {trainer.global_step}{where}"
            print(msg, flush=True)
            log.info(msg)
            announce(trainer, "time_limit" if reason == "time_limit" else "stop", msg)
        if reason == "SIGINT" and threading.current_thread() is threading.main_thread():
            # From now on a Ctrl-C aborts immediately.
            signal.signal(signal.SIGINT, signal.default_int_handler)

    # -- status ------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def status_line(self, trainer: pl.Trainer) -> str:
        m = current_metrics(trainer)
        parts = [f"step {trainer.global_step}" + (f"/{trainer.max_steps}" if trainer.max_steps > 0 else "")]
        for key, name in (("train/loss", "loss"), ("val/loss", "val_loss")):
            if key in m:
                parts.append(f"{name} {float(m[key]):.4f}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        done = trainer.global_step - self._start_step
        rate = done / self.elapsed() if self.elapsed() > 0 else 0.0
        for key in ("train/tokens_per_s", "train/samples_per_s"):
            if key in m:
                parts.append(f"{key.split('/')[1].replace('_per_s', '/s')} {float(m[key]):.4g}")
                break
        parts.append(f"elapsed {fmt_s(self.elapsed())}")
        if rate > 0 and trainer.max_steps > 0:
            eta = (trainer.max_steps - trainer.global_step) / rate
            if self.limit_s is not None:
                eta = min(eta, self.limit_s - self.elapsed())
            parts.append(f"eta {fmt_s(eta)}")
        return "status: " + ", ".join(parts)

    # -- fit the schedule to the time limit ----------------------------------------------------
    def _maybe_fit_schedule(self, trainer: pl.Trainer) -> None:
        fns = schedules(trainer)
        if not fns or self.limit_s is None:
            return
        fn = fns[0]
        warmup = int(fn.warmup_steps)
        step = trainer.global_step
        if self._fit_measure is None:
            # Skip the first step (compilation, allocator warm-up) before timing.
            if step - self._start_step >= 1:
                self._fit_measure = (step, time.monotonic())
            return
        if step != max(warmup, self._fit_measure[0] + 1) or fn.fitted:
            return
        s0, t0 = self._fit_measure
        per_step = (time.monotonic() - t0) / max(1, step - s0)
        remaining = max(0.0, self.limit_s - self.elapsed())
        total = step + int(remaining / per_step) if per_step > 0 else fn.total_steps
        if trainer.max_steps > 0:
            total = min(total, trainer.max_steps)
        fn.resize(total)
        if trainer.is_global_zero:
            log.info("fit_to_time: %.3f s/step, the schedule now ends at step %d%s", per_step, fn.total_steps,
                     _decay_start(fn))


def _decay_start(fn: Any) -> str:
    """``, its decay starts at step N`` for a WSD schedule, whose decay start moves with its end."""
    from lm_lightning.optim.schedules import WarmupStableDecay

    return f", its decay starts at step {fn.decay_start}" if isinstance(fn, WarmupStableDecay) else ""


def run_outcome(trainer: pl.Trainer) -> tuple[str, str | None, int]:
    """(summary status, stop reason, exit code) after fit returned."""
    for cb in trainer.callbacks:
        reason = cb.reason if isinstance(cb, StopsRun) else None
        if isinstance(reason, str) and reason in STOP_OUTCOMES:
            status, code = STOP_OUTCOMES[reason]
            if code and started_by_lightning(trainer):
                # Lightning's launcher watches the ranks it started and SIGKILLs every process,
                # its own included, as soon as one exits non-zero: a clean stop's 143 from this
                # rank could kill rank 0 while it writes summary.json. Rank 0 reports the code.
                code = 0
            return status, reason, code
    return "finished", None, 0


def started_by_lightning(trainer: Any) -> bool:
    """Is this process a rank that Lightning's own launcher started (``trainer=ddp_cpu``'s second
    process), rather than one a person, torchrun or SLURM started?"""
    from lightning.fabric.plugins.environments import LightningEnvironment

    env = getattr(trainer.strategy, "cluster_environment", None)
    return type(env) is LightningEnvironment and int(os.environ.get("LOCAL_RANK", "0") or 0) > 0



