"""The debugging toolkit: gradient norms, iteration time, MFU, the guides' metric names, plots.

- ``train/grad_norm`` (total) at log intervals, ``grad_norm/<layer>`` every ``per_layer_every``
  steps (also kept for the gradient-flow plot);
- ``train/iter_time_ms``, ``train/tokens_per_sec`` (the guides' names), ``train/mfu`` when the
  device's peak FLOP/s is known;
- ``eval/val_loss`` after each validation and ``final/val_loss`` at the end, written straight to
  the loggers (``val/loss`` stays the name that checkpoints and sweeps monitor);
- at the end, ``loss_curve.png`` and ``gradient_flow.png`` in the run directory (matplotlib,
  headless, imported only then);
- options (guide 003's debugging toolkit; on in ``experiment=fundamentallm``):
  ``histograms``: every ``histogram_every_n_steps`` steps a histogram of each parameter's
  gradient (``Gradients/<name>``) and weights (``Weights/<name>``) to TensorBoard and W&B;
  ``check_gradients``: every ``check_every_n_steps`` steps its ``check_gradients``: for each
  parameter the gradient norm, weight norm and their ratio, logged as the largest ratio per
  layer (``grad_param_ratio/<layer>``), with one warning line per problem: NaN or Inf
  gradients, a gradient norm above ``large_grad_norm``, a ratio above ``max_grad_param_ratio``.

Norms stay on the device; Lightning reads logged tensors at its log interval only.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lm_lightning.callbacks.protocols import GradNormSource
from lm_lightning.lit.metrics import at_log_step, current_metrics

log = logging.getLogger("lm_lightning")

def layer_of(name: str) -> str:
    """Group parameter names by layer: ``model.h.3.attn.c_attn.weight`` -> ``h.3``."""
    name = re.sub(r"^(model\.|_orig_mod\.)+", "", name)
    m = re.match(r"(h\.\d+)\.", name)
    return m.group(1) if m else name.rsplit(".", 1)[0]


class Monitoring(pl.Callback):
    def __init__(self, log_every_n_steps: int = 20, per_layer_every: int = 100, dirpath: str | None = None,
                 plots: bool = True, histograms: bool = False, histogram_every_n_steps: int = 500,
                 check_gradients: bool = False, check_every_n_steps: int = 100, large_grad_norm: float = 100.0,
                 max_grad_param_ratio: float = 1.0, max_warnings: int = 5) -> None:
        self.log_every_n_steps, self.per_layer_every = max(1, log_every_n_steps), max(1, per_layer_every)
        self.histograms, self.histogram_every = bool(histograms), max(1, int(histogram_every_n_steps))
        self.check_gradients, self.check_every = bool(check_gradients), max(1, int(check_every_n_steps))
        self.large_grad_norm, self.max_ratio = float(large_grad_norm), float(max_grad_param_ratio)
        self.max_warnings = max(1, int(max_warnings))
        self.warnings: list[str] = []  # every gradient warning of this run, in order (also logged)
        self.dirpath, self.plots = (Path(dirpath) if dirpath else None), plots
        self.train_curve: list[tuple[int, float]] = []
        self.val_curve: list[tuple[int, float]] = []
        self.grad_flow: dict[str, list[float]] = {}
        self._t0: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._t0 is None:
            self._t0 = time.perf_counter()

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step = trainer.global_step
        if self.histograms and step % self.histogram_every == 0:
            self._histograms(trainer, pl_module, step)
        if self.check_gradients and step % self.check_every == 0:
            self._check_gradients(trainer, pl_module, step)
        per_layer = step % self.per_layer_every == 0
        if at_log_step(trainer):
            # The norm the anomaly guard and clipping share (LMModule.grad_norm), before clipping.
            total = pl_module.grad_norm() if isinstance(pl_module, GradNormSource) else None
            if total is not None:
                pl_module.log("train/grad_norm", total)
        if per_layer:
            named = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
            if not named:
                return
            norms = torch._foreach_norm([g for _, g in named])
            by_layer: dict[str, torch.Tensor] = {}
            for (name, _), n in zip(named, norms):
                key = layer_of(name)
                by_layer[key] = by_layer.get(key, 0) + n.float() ** 2
            values = {k: v.sqrt() for k, v in by_layer.items()}
            # One sync every per_layer_every steps. Written straight to the loggers: a value given
            # to self.log would be re-reported, stale, at every log step until the next one.
            stacked = torch.stack(list(values.values()))
            if hasattr(stacked, "full_tensor"):  # FSDP2: DTensor gradients give replicated norms
                stacked = stacked.full_tensor()
            host = dict(zip(values, stacked.tolist()))
            self._to_loggers(trainer, {f"grad_norm/{k}": v for k, v in host.items()})
            for k, v in host.items():
                self.grad_flow.setdefault(k, []).append(v)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % trainer.accumulate_grad_batches or self._t0 is None:
            return
        step = trainer.global_step
        if step % self.log_every_n_steps:
            return
        dt = time.perf_counter() - self._t0
        steps = self.log_every_n_steps if step >= self.log_every_n_steps else step
        self._t0 = time.perf_counter()
        iter_ms = dt / max(1, steps) * 1000
        pl_module.log("train/iter_time_ms", iter_ms)
        ids = batch.get("input_ids") if isinstance(batch, dict) else None
        if ids is not None and iter_ms > 0:
            tokens = ids.numel() * trainer.accumulate_grad_batches * trainer.world_size
            tps = tokens / (iter_ms / 1000)
            pl_module.log("train/tokens_per_sec", tps)  # MFU is logged by throughput.Throughput
        loss = current_metrics(trainer).get("train/loss")
        if loss is not None:
            self.train_curve.append((step, float(loss)))

    def on_validation_start(self, trainer, pl_module) -> None:
        self._t0 = None  # validation time is not iteration time

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val/loss")
        if value is not None:
            self.val_curve.append((trainer.global_step, float(value)))
            self._to_loggers(trainer, {"eval/val_loss": float(value)})

    def on_train_end(self, trainer, pl_module) -> None:
        # With callbacks.split_eval the final metrics come from its separate final evaluation.
        from lm_lightning.callbacks.evaluation import SplitEval

        if self.val_curve and not any(isinstance(cb, SplitEval) for cb in trainer.callbacks):
            self._to_loggers(trainer, {"final/val_loss": self.val_curve[-1][1]})
        if self.plots and trainer.is_global_zero and not trainer.fast_dev_run:
            d = self.dirpath or Path(trainer.default_root_dir)
            try:
                plot_losses(self.train_curve, self.val_curve, d / "loss_curve.png")
                if self.grad_flow:
                    plot_grad_flow(self.grad_flow, d / "gradient_flow.png")
            except Exception as exc:  # a plot must never fail a finished run
                log.warning("could not write plots: %s", exc)

    def _histograms(self, trainer, pl_module, step: int) -> None:
        """Gradient and weight histograms, as guide 003's add_histogram loop, to TensorBoard and W&B."""
        sinks = [lg for lg in trainer.loggers if type(lg).__name__ in ("TensorBoardLogger", "WandbLogger")]
        if not sinks or not trainer.is_global_zero:
            return
        tensors: dict[str, torch.Tensor] = {}
        for name, p in pl_module.named_parameters():
            name = re.sub(r"^(model\.|_orig_mod\.)+", "", name)
            if p.grad is not None:
                tensors[f"Gradients/{name}"] = _local(p.grad)
            tensors[f"Weights/{name}"] = _local(p.detach())
        for lg in sinks:
            if type(lg).__name__ == "TensorBoardLogger":
                for key, t in tensors.items():
                    lg.experiment.add_histogram(key, t.float().cpu(), step)
            else:
                import wandb  # only with logger=wandb, which imports it anyway

                lg.experiment.log({key: wandb.Histogram(t.float().cpu().numpy()) for key, t in tensors.items()},
                                  commit=False)

    def _check_gradients(self, trainer, pl_module, step: int) -> None:
        """Guide 003's check_gradients: grad norm, weight norm and ratio per parameter; warnings."""
        named = [(re.sub(r"^(model\.|_orig_mod\.)+", "", n), p) for n, p in pl_module.named_parameters()
                 if p.grad is not None]
        if not named:
            return
        grads = [_local(p.grad) for _, p in named]
        g_norms = torch.stack(torch._foreach_norm(grads)).float()
        p_norms = torch.stack(torch._foreach_norm([_local(p.detach()) for _, p in named])).float()
        finite = torch.stack([torch.isfinite(g).all() for g in grads])
        nan = torch.stack([torch.isnan(g).any() for g in grads])
        ratios = g_norms / (p_norms + 1e-7)
        # One transfer for the whole check.
        rows = torch.stack([g_norms, p_norms, ratios, finite.float(), nan.float()], dim=1).cpu().tolist()
        by_layer: dict[str, float] = {}
        problems: list[str] = []
        for (name, _), (g, w, r, ok, has_nan) in zip(named, rows):
            key = layer_of(name)
            if ok:
                by_layer[key] = max(by_layer.get(key, 0.0), r)
            if has_nan:
                problems.append(f"NaN gradients in {name}")
            elif not ok:
                problems.append(f"Inf gradients in {name}")
            elif g > self.large_grad_norm:
                problems.append(f"large gradient in {name}: grad {g:.4g} > {self.large_grad_norm:g}")
            elif r > self.max_ratio:
                problems.append(f"grad/param ratio {r:.4g} in {name} (grad {g:.4g}, param {w:.4g}) "
                                f"> {self.max_ratio:g}")
        self._to_loggers(trainer, {f"grad_param_ratio/{k}": v for k, v in by_layer.items()})
        if not problems or not trainer.is_global_zero:
            return
        shown = problems[: self.max_warnings]
        if len(problems) > len(shown):
            shown.append(f"... and {len(problems) - len(shown)} more")
        for text in shown:
            line = f"gradient check, step {step}: {text}"
            self.warnings.append(line)
            log.warning(line)

    @staticmethod
    def _to_loggers(trainer: pl.Trainer, metrics: dict[str, Any]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def _local(t: torch.Tensor) -> torch.Tensor:
    """A whole tensor: an FSDP2 DTensor's full value, anything else as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_losses(train: list[tuple[int, float]], val: list[tuple[int, float]], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train/loss")
    if val:
        ax.plot(*zip(*val), marker="o", label="val/loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if train or val:
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_grad_flow(flow: dict[str, list[float]], path: Path) -> None:
    """Mean and max gradient norm per layer over the run: vanishing or exploding layers stand out."""
    plt = _pyplot()
    names = list(flow)
    means = [sum(v) / len(v) for v in flow.values()]
    maxes = [max(v) for v in flow.values()]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 4))
    x = range(len(names))
    ax.bar(x, maxes, alpha=0.4, label="max")
    ax.bar(x, means, alpha=0.8, label="mean")
    ax.set_xticks(list(x), names, rotation=60, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("gradient norm")
    ax.set_title("gradient flow")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
