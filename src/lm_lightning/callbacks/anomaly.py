"""The anomaly guard: non-finite losses and gradients, loss spikes, and data anomalies.

A non-finite loss or gradient is caught before the optimizer step it would poison, and the
step is skipped: no update, no momentum, no weight decay. Policy ``skip`` counts it and stops
the run after ``max_consecutive`` in a row; policy ``stop`` writes a diagnostic file and stops.
Either way the weights stay finite, and the checkpoint callback refuses non-finite weights.

How the step is skipped, and what it costs:

- With a fused Adam/AdamW (the default optimizer, on CUDA and CPU) and policy ``skip``, the
  skip happens on the device and costs no host sync: the non-finite flag goes to the fused
  kernel as ``found_inf`` (the mechanism the fp16 GradScaler uses), which leaves parameters,
  moments and step counts untouched. The host reads the flags and losses of the steps since
  the last check every ``check_every_n_steps`` steps (the log interval, where Lightning syncs
  anyway), and every step while steps keep failing, to count skips, stop after
  ``max_consecutive`` and look for loss spikes.
- Otherwise (other optimizers, Lookahead, policy ``stop``) the host must decide: one
  device->host sync per optimizer step, and the skip drops every gradient (PyTorch optimizers
  leave a parameter without a gradient untouched).

``policy: off`` removes the guard.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections import deque
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lm_lightning.callbacks.alerts import announce
from lm_lightning.callbacks.protocols import GradNormSource
from lm_lightning.optim.grad_norm import total_grad_norm

log = logging.getLogger("lm_lightning")


class AnomalyGuard(pl.Callback):
    def __init__(self, policy: str = "skip", max_consecutive: int = 5, spike_factor: float = 10.0,
                 spike_window: int = 50, dirpath: str | None = None, check_every_n_steps: int = 1) -> None:
        if policy not in ("skip", "stop", "off"):
            raise ValueError(f"anomaly policy must be skip, stop or off, got {policy!r}")
        self.policy, self.max_consecutive = policy, max(1, int(max_consecutive))
        self.check_every_n_steps = max(1, int(check_every_n_steps))
        self.spike_factor, self.dirpath = float(spike_factor), Path(dirpath) if dirpath else None
        self.losses: deque[float] = deque(maxlen=max(3, int(spike_window)))
        self.skipped = self.consecutive = self.spikes = self.data_anomalies = 0
        self.reason: str | None = None
        self.events: list[dict[str, Any]] = []
        self._loss: torch.Tensor | None = None
        self._pending: list[tuple[int, torch.Tensor]] = []  # (step, [loss, grad norm]) not yet read
        self._watch = False  # the last step read was bad: read every step until one is good
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._trainer = trainer

    # -- catching non-finite values at the step -------------------------------------------------
    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if self.policy == "off":
            return
        # Summed over the micro-batches of one optimizer step; stays on the device.
        loss = loss.detach().float()
        self._loss = loss if self._loss is None else self._loss + loss

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if self.policy == "off" or self._loss is None:
            return
        loss, self._loss = self._loss, None
        norm = None
        # With an fp16 GradScaler, overflowing gradients are normal and the scaler skips them.
        if getattr(trainer.precision_plugin, "scaler", None) is None:
            norm = pl_module.grad_norm() if isinstance(pl_module, GradNormSource) else \
                total_grad_norm(p for g in optimizer.param_groups for p in g["params"])
        # [loss, gradient norm]: the step is bad unless both are finite. Few small kernels, no sync.
        record = torch.stack([loss.float(), loss.float() if norm is None else norm.to(loss.device, torch.float32)])
        self._pending.append((trainer.global_step, record))
        on_device = self.policy == "skip" and _skips_on_device(optimizer)
        if on_device:
            # The fused kernel reads found_inf after this hook: 1 skips the whole step.
            device = optimizer.param_groups[0]["params"][0].device
            optimizer.found_inf = (~torch.isfinite(record).all()).to(device=device, dtype=torch.float32)
            optimizer.grad_scale = None
            last = trainer.max_steps > 0 and trainer.global_step + 1 >= trainer.max_steps
            if not (self._watch or last or (trainer.global_step + 1) % self.check_every_n_steps == 0):
                return
        self._read(trainer, pl_module, optimizer, current_step=trainer.global_step)

    def _read(self, trainer, pl_module, optimizer, current_step: int | None) -> None:
        """Bring the pending flags and losses to the host (the one sync) and act on them."""
        if not self._pending:
            return
        steps = [step for step, _ in self._pending]
        values = torch.stack([v for _, v in self._pending]).tolist()
        self._pending.clear()
        bad = False
        for step, (loss, norm) in zip(steps, values):
            bad = not (math.isfinite(loss) and math.isfinite(norm))
            if bad:
                self._non_finite(trainer, pl_module, optimizer, step, loss, current=step == current_step)
            else:
                self.consecutive = 0
                self._check_spike(trainer, step, loss / trainer.accumulate_grad_batches)
        self._watch = bad

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # found_inf is for the step just taken only: a stale one would skip a later step.
        for optimizer in trainer.optimizers:
            if "found_inf" in optimizer.__dict__:
                del optimizer.found_inf, optimizer.grad_scale

    def on_train_end(self, trainer, pl_module) -> None:
        self._read(trainer, pl_module, None, current_step=None)

    def _non_finite(self, trainer, pl_module, optimizer, step: int, loss: float, current: bool = True) -> None:
        bad_params: list[str] = []
        if current and optimizer is not None:
            # This step's gradients are still here: name the bad ones, and skip the step by
            # dropping every gradient (harmless when found_inf already skips it on the device).
            bad_params = [n for n, p in pl_module.named_parameters()
                          if p.grad is not None and not torch.isfinite(p.grad).all()]
            for group in optimizer.param_groups:
                for p in group["params"]:
                    p.grad = None
        self.skipped += 1
        self.consecutive += 1
        event = {"step": step, "kind": "non_finite", "loss": loss, "bad_grads": bad_params[:20]}
        self.events.append(event)
        msg = f"non-finite loss/gradient at step {step} (loss {loss}); optimizer step skipped " \
              f"({self.consecutive} in a row, {self.skipped} in total)"
        if trainer.is_global_zero:
            log.warning(msg)
        if self.policy == "stop":
            path = self._diagnostic(trainer, pl_module, event)
            self._stop(trainer, f"{msg}; policy stop, diagnostic {path}")
        elif self.consecutive >= self.max_consecutive:
            self._stop(trainer, f"{msg}; {self.max_consecutive} in a row, stopping")
        elif trainer.is_global_zero:
            announce(trainer, "anomaly", msg)

    def _stop(self, trainer, msg: str) -> None:
        self.reason = "anomaly"
        trainer.should_stop = True
        if trainer.is_global_zero:
            print(msg, flush=True)
            announce(trainer, "anomaly", msg)

    def _diagnostic(self, trainer, pl_module, event: dict[str, Any]) -> Path | None:
        if not trainer.is_global_zero:
            return None
        d = self.dirpath or Path(trainer.default_root_dir)
        d.mkdir(parents=True, exist_ok=True)
        stats = {}
        for name, p in pl_module.named_parameters():
            g = p.grad
            stats[name] = {"weight_finite": bool(torch.isfinite(p).all()),
                           "grad_finite": None if g is None else bool(torch.isfinite(g).all()),
                           "grad_absmax": None if g is None else float(g.abs().nan_to_num(posinf=-1).max())}
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        path = d / f"anomaly-step{event['step']}.json"
        path.write_text(json.dumps({**event, "lr": lr, "recent_losses": list(self.losses), "params": stats},
                                   indent=1, default=str) + "\n")
        return path

    # -- spikes --------------------------------------------------------------------------------
    def _check_spike(self, trainer, step: int, loss: float) -> None:
        if len(self.losses) >= 10:
            median = statistics.median(self.losses)
            if median > 0 and loss > self.spike_factor * median:
                self.spikes += 1
                event = {"step": step, "kind": "loss_spike", "loss": loss, "median": median}
                self.events.append(event)
                if trainer.is_global_zero:
                    msg = f"loss spike at step {step}: {loss:.4f} > {self.spike_factor:g} x median {median:.4f}"
                    log.warning(msg)
                    announce(trainer, "anomaly", msg)
                trainer.lightning_module.log("anomaly/loss_spikes", float(self.spikes))
        self.losses.append(loss)

    # -- anomalies found in the data (Collatz step cap, non-trivial cycles) ----------------------
    def on_data_anomaly(self, trainer, pl_module, anomalies: list[dict[str, Any]]) -> None:
        self.data_anomalies += len(anomalies)
        for a in anomalies:
            self.events.append({"step": trainer.global_step, "kind": f"data_{a.get('kind')}", "n": str(a.get("n"))})
        if trainer.is_global_zero:
            kinds = ", ".join(sorted({str(a.get("kind")) for a in anomalies}))
            log.warning("%d data anomalies (%s) at step %d, e.g. n=%s", len(anomalies), kinds,
                        trainer.global_step, anomalies[0].get("n"))
            d = self.dirpath or Path(trainer.default_root_dir)
            d.mkdir(parents=True, exist_ok=True)
            with open(d / "data_anomalies.jsonl", "a") as f:
                for a in anomalies:
                    f.write(json.dumps({"step": trainer.global_step, **a}, default=str) + "\n")

    def state_dict(self) -> dict[str, Any]:
        if self._pending and self._trainer is not None:  # a checkpoint counts every step before it
            self._read(self._trainer, self._trainer.lightning_module, None, current_step=None)
        return {"skipped": self.skipped, "spikes": self.spikes, "data_anomalies": self.data_anomalies}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.spikes = int(state.get("spikes", 0))
        self.data_anomalies = int(state.get("data_anomalies", 0))


def _skips_on_device(optimizer) -> bool:
    """A fused torch Adam/AdamW: its step takes found_inf and skips itself on the device."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and \
        bool(getattr(optimizer, "defaults", {}).get("fused"))

