"""The LightningModule: one transformer, task heads and a weighted multi-task loss.

Longer than 300 lines because it is the one place where Lightning's hooks meet the model: the
training, validation and test steps, the optimizer and schedule wiring, configure_model's
parallelism and the metric states all hang off the same attributes. The model is :mod:`lm_lightning.model`,
the loss :mod:`lm_lightning.lit.objectives`, the optimizer :mod:`lm_lightning.optim`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn as nn
import torchmetrics

from lm_lightning.callbacks.protocols import DataAnomalyListener, listeners
from lm_lightning.lit.metrics import at_log_step
from lm_lightning.lit.objectives import HEADS, IGNORE_INDEX, multi_task_loss
from lm_lightning.model import GPT, ModelConfig
from lm_lightning.optim.build import build_optimizer, keep_fused_choice
from lm_lightning.optim.grad_norm import total_grad_norm
from lm_lightning.optim.schedules import lightning_scheduler, refit_schedule


class LMModule(pl.LightningModule):
    """Wraps :class:`GPT` with the heads its objectives need.

    Hyperparameters are plain containers (model config dict, loss weights), so checkpoints
    load with ``torch.load(weights_only=True)``. Optimizer and scheduler factories come from
    Hydra and are not hyperparameters: the resolved run config travels in the checkpoint.
    """

    def __init__(
        self,
        model: dict[str, Any] | ModelConfig,
        loss_weights: dict[str, float],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        total_steps: int = 0,
        z_loss: float = 0.0,
    ) -> None:
        super().__init__()
        model_cfg = model if isinstance(model, ModelConfig) else ModelConfig.from_dict(dict(model))
        self.save_hyperparameters({"model": model_cfg.to_dict(), "loss_weights": dict(loss_weights),
                                   "z_loss": float(z_loss)})
        self.config = model_cfg
        self.loss_weights = dict(loss_weights)
        self.z_loss = float(z_loss)
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.total_steps = total_steps
        self._loss_fn = self._forward_loss
        self.model = GPT(model_cfg)
        heads = {HEADS[name] for name in self.loss_weights if name in HEADS}
        self.regression_head = nn.Linear(model_cfg.n_embd, 1) if "regression" in heads else None
        self.val_metrics = self._metrics()
        # The resolved run config as plain containers; train() sets it, checkpoints carry it.
        self.run_config: dict[str, Any] | None = None
        self.train_loss: torch.Tensor | None = None  # the newest training loss, on the device
        self._grad_norm: torch.Tensor | None = None  # see grad_norm()
        self.data_anomalies = 0  # reported by the data (Collatz), counted over this process's batches
        self._compile_kwargs: dict[str, Any] | None = None  # set by compile()
        self._kernel_flags_kept = False  # see on_train_batch_start

    def _metrics(self) -> nn.ModuleDict:
        m: dict[str, torchmetrics.Metric] = {"loss": torchmetrics.MeanMetric()}
        for name in self.loss_weights:
            m[name] = torchmetrics.MeanMetric()
        if "next_token" in self.loss_weights:
            m["next_token_acc"] = torchmetrics.classification.MulticlassAccuracy(
                self.config.vocab_size, average="micro", ignore_index=IGNORE_INDEX
            )
        if "stopping_time" in self.loss_weights:
            m["stopping_time_mae"] = torchmetrics.MeanAbsoluteError()
        return nn.ModuleDict(m)

    # -- forward ----------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        mask = batch.get("padding_mask")
        logits, h = self.model(batch["input_ids"], mask, return_hidden=True)  # (B, T, V), (B, T, C)
        out = {"logits": logits}
        if self.regression_head is not None:
            # The regression head reads the last real token, which has seen the whole prefix.
            last = batch["lengths"] - 1  # (B,)
            h_last = h[torch.arange(h.shape[0], device=h.device), last]  # (B, C)
            out["stopping_time"] = self.regression_head(h_last).squeeze(-1)  # log1p(steps)
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        self._report_data_anomalies(batch)
        loss, parts = self._loss_fn(batch)
        # The newest loss, kept on the device: the progress bar, `status` and alerts read it
        # through current_metrics() when they need it, so nothing syncs here.
        self.train_loss = loss.detach()
        # self.log costs about 0.6 ms of Python per call in Lightning 2.6 (it moves its result
        # record to the device on every call), so metrics go to Lightning only at the steps
        # its loggers write: logging every step was half of the trainer's per-step overhead.
        if at_log_step(self._trainer):
            self.log("train/loss", loss)
            if "next_token" in parts:  # the language-model objective's perplexity
                self.log("train/ppl", torch.exp(parts["next_token"].detach().clamp(max=50)))
            if len(parts) > 1:
                for name, value in parts.items():
                    self.log(f"train/{name}", value)
        return loss

    def _forward_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return multi_task_loss(self(batch), batch, self.loss_weights, self.z_loss)

    def compile(self, **kwargs: Any) -> None:  # type: ignore[override]
        """Compile forward and loss together: the cross-entropy fuses with the output layer.

        Under FSDP, ``configure_model`` undoes this and compiles each block instead (parallel.py).
        """
        self._compile_kwargs = dict(kwargs)
        tensor_batch = torch.compile(self._forward_loss, **kwargs)

        def loss_fn(batch):  # python objects in the batch (anomaly lists) stay out of the graph
            return tensor_batch({k: v for k, v in batch.items() if torch.is_tensor(v)})

        self._loss_fn = loss_fn

    def configure_model(self) -> None:
        """Under FSDP2 (trainer=fsdp, fsdp_cpu) shard the model here; other strategies: nothing.

        Lightning calls this on every rank once the device mesh exists; lm_lightning/lit/parallel.py
        is the one place that applies parallelism (model.py stays a plain module).
        """
        from lm_lightning.run.distributed import is_fsdp

        if self._trainer is None or not is_fsdp(self.trainer.strategy) or not hasattr(self.trainer.strategy, "device_mesh"):
            return
        from lm_lightning.lit import parallel

        if parallel.is_parallelized(self.model):
            return
        if self._compile_kwargs is not None:
            self._loss_fn = self._forward_loss  # compiled per block instead
        heads = [self.regression_head] if self.regression_head is not None else []
        parallel.parallelize(self.model, self.trainer.strategy.device_mesh, heads=heads,
                             precision=str(self.trainer.precision), compile_kwargs=self._compile_kwargs,
                             reshard_after_forward=parallel.reshards_after_forward(self.trainer.strategy))

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if not self._kernel_flags_kept:
            self._keep_kernel_flags()
            self._kernel_flags_kept = True
            # Before the first step rather than at the first validation, hours later.
            self._check_even_eval_batches(self.trainer.num_val_batches)

    def _keep_kernel_flags(self) -> None:
        # This run's fused-kernel choice, not the resumed checkpoint's (optim.build.keep_fused_choice).
        # Done at the first batch: the restore comes after on_train_start's callers, and a
        # mid-epoch resume skips on_train_epoch_start.
        for opt in self.trainer.optimizers if self._trainer is not None else []:
            keep_fused_choice(opt)

    def on_validation_start(self) -> None:
        self._check_even_eval_batches()

    def on_test_start(self) -> None:
        self._check_even_eval_batches()

    def _check_even_eval_batches(self, counts: list[int | float] | None = None) -> None:
        """FSDP: every forward is a collective (each block's weights are all-gathered), so all
        ranks must run the same number of evaluation batches; one rank with an extra batch would
        wait forever. Checked on every rank together, so that all of them stop with the error."""
        from lm_lightning.run.distributed import is_fsdp

        if self._trainer is None or not is_fsdp(self.trainer.strategy) or self.trainer.world_size < 2:
            return
        if counts is None:
            stage = self.trainer.state.stage
            validating = stage == "validate" or self.trainer.validating
            counts = self.trainer.num_val_batches if validating else self.trainer.num_test_batches
        local = torch.tensor([sum(int(c) for c in counts if c != float("inf"))], dtype=torch.long)
        every = [torch.zeros_like(local) for _ in range(self.trainer.world_size)]
        torch.distributed.all_gather(every, local)
        found = sorted({int(t) for t in every})
        if len(found) > 1:
            from lm_lightning.errors import UserError

            raise UserError(f"FSDP needs the same number of evaluation batches on every rank, got {found}: make the "
                            f"validation split a multiple of {self.trainer.world_size} x data.batch_size")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def _eval_step(self, batch: dict[str, Any]) -> None:
        outputs = self(batch)
        # Validation scores the objectives alone: the z-loss is a training regulariser.
        loss, parts = multi_task_loss(outputs, batch, self.loss_weights)
        n = batch["input_ids"].shape[0]
        self.val_metrics["loss"].update(loss, n)
        for name, value in parts.items():
            # Token-level objectives are weighted by their token count, so the epoch value is
            # the true mean over the split rather than a mean of batch means.
            weight = (batch["labels"] != IGNORE_INDEX).sum() if name == "next_token" else n
            self.val_metrics[name].update(value, weight)
        if "next_token_acc" in self.val_metrics:
            self.val_metrics["next_token_acc"].update(outputs["logits"].argmax(-1), batch["labels"])
        if "stopping_time_mae" in self.val_metrics:
            pred_steps = torch.expm1(outputs["stopping_time"].float()).clamp(min=0)
            self.val_metrics["stopping_time_mae"].update(pred_steps, batch["stopping_time"].float())

    def _log_eval(self, prefix: str) -> None:
        values = {name: metric.compute() for name, metric in self.val_metrics.items()}
        if "next_token" in values:
            values["ppl"] = torch.exp(values["next_token"].clamp(max=50))
        for name, value in values.items():
            self.log(f"{prefix}/{name}", value, sync_dist=False)
        for metric in self.val_metrics.values():
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def on_train_start(self) -> None:
        # After a resume the restored schedule is sized for the horizon it was saved with; a
        # rerun with a larger trainer.max_steps (or max_epochs) re-fits it (optim.schedules.refit_schedule).
        total = self.total_steps if self.total_steps > 0 else int(self.trainer.estimated_stepping_batches)
        line = refit_schedule(self.trainer, total)
        if line and self.trainer.is_global_zero:
            import logging

            print(line, flush=True)
            logging.getLogger("lm_lightning").info(line)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.run_config is not None:
            checkpoint["run_config"] = self.run_config
        from lm_lightning.run.distributed import is_fsdp

        if self._trainer is not None and self.trainer.optimizers and not is_fsdp(self.trainer.strategy):
            # torch numbers optimizer state by position; the names let an FSDP2 run (which keys
            # it by parameter name) resume from this one-process checkpoint (resume.for_strategy).
            names = {id(p): n for n, p in self.named_parameters()}
            checkpoint["optimizer_param_names"] = [
                [names.get(id(p), "") for g in opt.param_groups for p in g["params"]] for opt in self.trainer.optimizers]

    # -- anomalies from the data (Collatz step cap / cycles) --------------------------------
    def _report_data_anomalies(self, batch: dict[str, Any]) -> None:
        anomalies = batch.get("anomalies")
        if not anomalies:
            return
        self.data_anomalies += len(anomalies)
        for cb in listeners(self._trainer, DataAnomalyListener):
            cb.on_data_anomaly(self.trainer, self, anomalies)

    # -- optimization -----------------------------------------------------------------------
    def on_after_backward(self) -> None:
        self._grad_norm = None  # the gradients changed

    def _trained_parameters(self) -> list[torch.Tensor]:
        # The optimizer's parameters: walking the module tree instead (self.parameters()) costs
        # ~0.2 ms a step here, as torchmetrics modules hash their state on the way.
        optimizers = self.trainer.optimizers if self._trainer is not None else []
        if not optimizers:
            return list(self.parameters())
        return [p for opt in optimizers for g in opt.param_groups for p in g["params"]]

    def flops_per_token(self) -> float:
        """Training FLOPs per token of the transformer (MFU, the model summary)."""
        return float(self.model.flops_per_token())

    def grad_norm(self) -> torch.Tensor | None:
        """The total 2-norm of the gradients before clipping, as a device tensor (no sync).

        Computed once per backward and shared: the anomaly guard checks it is finite, clipping
        scales by it and monitoring logs it, instead of each reading every gradient again.
        """
        if self._grad_norm is None:
            self._grad_norm = total_grad_norm(self._trained_parameters())
        return self._grad_norm

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning refuses to clip for fused optimizers because, under fp16 loss scaling, they
        # unscale inside step(). Without a scaler (bf16, fp32) the gradients are already true,
        # so clip them directly; fp16 runs never get a fused optimizer (configure_optimizers).
        from lm_lightning.run.distributed import is_fsdp

        sharded = getattr(self.trainer.strategy, "model", None)
        if gradient_clip_val and is_fsdp(self.trainer.strategy) and hasattr(sharded, "clip_grad_norm_"):
            # FSDP1 only: Lightning's FSDP precision plugin refuses norm clipping; FSDP's own
            # method computes the norm over every rank's shards. (FSDP2's gradients are DTensors,
            # which torch's clip_grad_norm_ in Lightning's default path handles.)
            if gradient_clip_algorithm in (None, "norm"):
                sharded.clip_grad_norm_(gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
            return
        if gradient_clip_val and getattr(optimizer, "defaults", {}).get("fused"):
            if gradient_clip_algorithm in (None, "norm"):
                norm = self.grad_norm()
                if norm is not None:
                    torch.nn.utils.clip_grads_with_norm_(self._trained_parameters(), gradient_clip_val, norm)
            else:
                torch.nn.utils.clip_grad_value_(self.parameters(), gradient_clip_val)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def configure_optimizers(self):
        if self.optimizer_factory is None:
            raise RuntimeError("LMModule was built without an optimizer factory (inference only)")
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        from lm_lightning.run.distributed import is_fsdp

        # Whether Adam/AdamW run fused depends on both (optim.build.use_fused).
        sharded = self._trainer is not None and is_fsdp(self.trainer.strategy)
        optimizer = build_optimizer(self.optimizer_factory, self, self.device, precision=precision, sharded=sharded)
        if self.scheduler_factory is None:
            return optimizer
        total = self.total_steps
        if total <= 0:
            total = int(self.trainer.estimated_stepping_batches)
        scheduler = self.scheduler_factory(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": lightning_scheduler(scheduler, self._trainer)}

