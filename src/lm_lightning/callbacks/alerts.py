"""Alerts: a small notifier interface and a Discord webhook behind it.

The webhook URL comes only from the environment (``DISCORD_WEBHOOK_URL``): it is never a
config value, so it never reaches config files, hyperparameters, checkpoints, logs or wandb.
Messages are posted from a background thread through a bounded queue, so a slow or dead
endpoint never slows training; when the queue is full, messages are dropped and counted.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import lightning.pytorch as pl

from lm_lightning.callbacks.protocols import RunEventListener, listeners
from lm_lightning.lit.metrics import current_metrics

log = logging.getLogger("lm_lightning")

DISCORD_LIMIT = 2000
ENV_VAR = "DISCORD_WEBHOOK_URL"


def announce(trainer: pl.Trainer, kind: str, message: str) -> None:
    """Hand an event to every callback that takes events (the Alerts callback)."""
    for cb in listeners(trainer, RunEventListener):
        cb.on_run_event(trainer, kind, message)


def split_message(text: str, limit: int = DISCORD_LIMIT, max_parts: int = 3) -> list[str]:
    """Split on line breaks where possible; whatever exceeds ``max_parts`` parts is truncated."""
    parts: list[str] = []
    rest = text
    while rest and len(parts) < max_parts:
        if len(rest) <= limit:
            parts.append(rest)
            rest = ""
            break
        cut = rest.rfind("\n", 0, limit)
        cut = cut if cut > 0 else limit
        parts.append(rest[:cut])
        rest = rest[cut:].lstrip("\n")
    if rest:
        marker = "… (truncated)"
        parts[-1] = parts[-1][: limit - len(marker)] + marker
    return parts


class Notifier:
    """Interface: ``send`` must return at once; ``close`` flushes for at most ``timeout`` s."""

    def send(self, text: str) -> None:
        raise NotImplementedError

    def close(self, timeout: float = 5.0) -> None:
        pass


class DiscordNotifier(Notifier):
    def __init__(self, url: str, timeout: float = 10.0, queue_size: int = 64, max_retries: int = 5) -> None:
        self._url = url + ("&" if "?" in url else "?") + "wait=true"
        self.timeout, self.max_retries = timeout, max_retries
        self.queue: queue.Queue[str | None] = queue.Queue(maxsize=queue_size)
        self.disabled = False
        self.sent = self.dropped = self.failed = 0
        self._thread = threading.Thread(target=self._run, name="lm-discord", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:  # never show the URL
        return f"DiscordNotifier(disabled={self.disabled}, sent={self.sent}, dropped={self.dropped})"

    def send(self, text: str) -> None:
        if self.disabled:
            return
        for part in split_message(text):
            try:
                self.queue.put_nowait(part)
            except queue.Full:
                self.dropped += 1

    def close(self, timeout: float = 5.0) -> None:
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if not self.disabled:
                self._post(item)

    def _post(self, content: str) -> None:
        body = json.dumps({"content": content}).encode()
        for _ in range(self.max_retries):
            req = urllib.request.Request(self._url, data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": "lm_lightning"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    resp.read()
                self.sent += 1
                return
            except urllib.error.HTTPError as err:
                if err.code == 429:
                    time.sleep(min(60.0, _retry_after(err)))
                    continue
                if err.code in (401, 403, 404):
                    # The webhook is gone or the token is wrong: retrying cannot help.
                    self.disabled = True
                    log.warning("discord alerts disabled: the webhook answered HTTP %d", err.code)
                    return
                self.failed += 1
                log.warning("discord alert not sent: HTTP %d", err.code)
                return
            except (urllib.error.URLError, TimeoutError, OSError) as err:
                # Only the kind of failure: the reason of a URLError can contain the address.
                self.failed += 1
                log.warning("discord alert not sent: %s", type(getattr(err, "reason", err)).__name__)
                return
        self.failed += 1


def _retry_after(err: urllib.error.HTTPError) -> float:
    try:
        return float(json.loads(err.read().decode() or "{}").get("retry_after", 1.0))
    except (ValueError, AttributeError):
        pass
    try:
        return float(err.headers.get("Retry-After", 1.0))
    except (TypeError, ValueError):
        return 1.0


class Alerts(pl.Callback):
    """Training start and end, time limit, stop, anomalies, cycles found, progress every N steps."""

    def __init__(self, progress_every_n_steps: int = 500, notifier: Notifier | None = None,
                 run_name: str | None = None) -> None:
        self.progress_every_n_steps = max(0, int(progress_every_n_steps))
        self.run_name = run_name
        self._notifier = notifier
        self._owns_notifier = notifier is None

    @property
    def notifier(self) -> Notifier | None:
        return self._notifier

    def _send(self, trainer: pl.Trainer, text: str) -> None:
        if self._notifier is not None and trainer.is_global_zero:
            prefix = f"[{self.run_name}] " if self.run_name else ""
            self._notifier.send(prefix + text)

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self._notifier is None and trainer.is_global_zero and os.environ.get(ENV_VAR):
            self._notifier = DiscordNotifier(os.environ[ENV_VAR])

    def on_train_start(self, trainer, pl_module) -> None:
        target = f" to step {trainer.max_steps}" if trainer.max_steps > 0 else ""
        self._send(trainer, f"training started at step {trainer.global_step}{target}")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        n = self.progress_every_n_steps
        step = trainer.global_step
        if n and step and step % n == 0 and (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            loss = current_metrics(trainer).get("train/loss")
            self._send(trainer, f"step {step}" + (f": loss {float(loss):.4f}" if loss is not None else ""))

    def on_run_event(self, trainer, kind: str, message: str) -> None:
        self._send(trainer, message)

    def on_data_anomaly(self, trainer, pl_module, anomalies: list[dict[str, Any]]) -> None:
        cycles = [a for a in anomalies if a.get("kind") == "cycle"]
        if cycles:
            ns = ", ".join(str(a["n"]) for a in cycles[:5])
            self._send(trainer, f"NON-TRIVIAL CYCLE candidate(s) at step {trainer.global_step}: n = {ns}")
        others = len(anomalies) - len(cycles)
        if others:
            self._send(trainer, f"{others} data anomalies (step cap) at step {trainer.global_step}")

    def on_train_end(self, trainer, pl_module) -> None:
        loss = trainer.callback_metrics.get("val/loss")
        extra = f", val/loss {float(loss):.4f}" if loss is not None else ""
        self._send(trainer, f"training ended at step {trainer.global_step}{extra}")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._send(trainer, f"training failed at step {trainer.global_step}: {type(exception).__name__}")
        self.teardown(trainer, pl_module, "fit")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._notifier is not None and self._owns_notifier:
            self._notifier.close(timeout=5.0)
            self._notifier = None
