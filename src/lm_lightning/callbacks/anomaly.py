"""The anomaly guard: non-finite losses and gradients, loss spikes, and data anomalies.

A non-finite loss or gradient is caught before the optimizer step it would poison. The step
is skipped by dropping every gradient (PyTorch optimizers leave parameters without a gradient
untouched: no update, no momentum, no weight decay). Policy ``skip`` counts it and stops the
run after ``max_consecutive`` in a row; policy ``stop`` writes a diagnostic file and stops.
Either way the weights stay finite, and the checkpoint callback refuses non-finite weights.

Cost: deciding to skip needs the answer on the host, so an enabled guard does one device->host
sync per optimizer step (a single small tensor holding the flag and the loss). ``policy: off``
removes it.
"""

from __future__ import annotations

import json
import logging
import statistics
from collections import deque
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lm_lightning.callbacks.alerts import announce

log = logging.getLogger("lm_lightning")


class AnomalyGuard(pl.Callback):
    def __init__(self, policy: str = "skip", max_consecutive: int = 5, spike_factor: float = 10.0,
                 spike_window: int = 50, dirpath: str | None = None) -> None:
        if policy not in ("skip", "stop", "off"):
            raise ValueError(f"anomaly policy must be skip, stop or off, got {policy!r}")
        self.policy, self.max_consecutive = policy, max(1, int(max_consecutive))
        self.spike_factor, self.dirpath = float(spike_factor), Path(dirpath) if dirpath else None
        self.losses: deque[float] = deque(maxlen=max(3, int(spike_window)))
        self.skipped = self.consecutive = self.spikes = self.data_anomalies = 0
        self.reason: str | None = None
        self.events: list[dict[str, Any]] = []
        self._loss: torch.Tensor | None = None

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
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        # With an fp16 GradScaler, overflowing gradients are normal and the scaler skips them.
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        bad = ~torch.isfinite(self._loss)
        if grads and not scaled:
            norms = torch._foreach_norm(grads)
            bad = bad | ~torch.isfinite(torch.stack([n.to(bad.device) for n in norms]).sum())
        flag, loss = torch.stack([bad.float(), self._loss.float()]).tolist()  # the one sync
        self._loss = None
        step = trainer.global_step
        if flag:
            self._non_finite(trainer, pl_module, optimizer, step, loss)
        else:
            self.consecutive = 0
            self._check_spike(trainer, step, loss / trainer.accumulate_grad_batches)

    def _non_finite(self, trainer, pl_module, optimizer, step: int, loss: float) -> None:
        bad_params = [n for n, p in pl_module.named_parameters()
                      if p.grad is not None and not torch.isfinite(p.grad).all()]
        for group in optimizer.param_groups:
            for p in group["params"]:
                p.grad = None  # the step becomes a no-op for every parameter
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
        return {"skipped": self.skipped, "spikes": self.spikes, "data_anomalies": self.data_anomalies}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.spikes = int(state.get("spikes", 0))
        self.data_anomalies = int(state.get("data_anomalies", 0))
