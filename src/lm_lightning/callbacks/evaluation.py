"""Evaluation the guides ask for beyond Lightning's validation loop.

``SplitEval`` (guide 004, cs336): at every validation, ``eval/train_loss`` over as many batches
of the training split as validation reads of its own (``eval/val_loss``, the validation loop's
loss, is written by callbacks.monitoring); when training ends, a separate final evaluation of
both splits, ``final/train_loss`` and ``final/val_loss``, in the loggers and in summary.json.

``EpochEndValidation`` (guide 002): validate at the end of every epoch as well as every
``trainer.val_check_interval`` steps (Lightning, given a step interval, skips the epoch end).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl
import torch

if TYPE_CHECKING:
    from lm_lightning.data.base import LMDataModule

log = logging.getLogger("lm_lightning")


def train_eval_batches(datamodule: LMDataModule, n_batches: int) -> Iterable[dict[str, Any]]:
    """``n_batches`` evaluation batches of the training split, spread over it, the same every time
    (no random draws: the training stream and its RNG are untouched)."""
    return datamodule.train_eval_batches(n_batches)


@torch.no_grad()
def mean_loss(trainer: pl.Trainer, pl_module: Any, batches: Iterable[dict[str, Any]]) -> float | None:
    """The objectives' loss (no z-loss), averaged over samples, with the model in eval mode."""
    from lm_lightning.lit.objectives import multi_task_loss

    was_training = pl_module.training
    pl_module.eval()
    total = torch.zeros((), dtype=torch.float64, device=pl_module.device)
    count = 0
    try:
        with trainer.precision_plugin.forward_context():
            for batch in batches:
                batch = {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
                loss, _ = multi_task_loss(pl_module(batch), batch, pl_module.loss_weights)
                n = int(batch["input_ids"].shape[0])
                total += loss.detach().double() * n
                count += n
    finally:
        pl_module.train(was_training)
    return float(total / count) if count else None  # one host sync per evaluation


class SplitEval(pl.Callback):
    """``eval/train_loss`` beside ``eval/val_loss`` at each validation, and a final evaluation.

    ``eval_iters``: batches of each split (null: the data module's ``eval_batches``, else as many
    as the validation loop has). The validation loss is the validation loop's own mean.
    """

    def __init__(self, eval_iters: int | None = None, final: bool = True) -> None:
        self.eval_iters = int(eval_iters) if eval_iters else None
        self.final = final
        self.final_metrics: dict[str, float] = {}

    def _n(self, trainer: pl.Trainer) -> int:
        if trainer.fast_dev_run:
            return 1  # a pipeline check
        if self.eval_iters:
            return self.eval_iters
        dm_n = trainer.datamodule.eval_batches
        if dm_n:
            return dm_n
        counts = [int(c) for c in (trainer.num_val_batches or []) if c != float("inf")]
        return max(1, sum(counts)) if counts else 1

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        # eval/val_loss is the validation loop's val/loss, which callbacks.monitoring writes.
        train = mean_loss(trainer, pl_module, train_eval_batches(trainer.datamodule, self._n(trainer)))
        if train is not None:
            pl_module.log("eval/train_loss", train, sync_dist=False)

    def on_train_end(self, trainer, pl_module) -> None:
        from lm_lightning.callbacks.control import run_outcome

        if not self.final or trainer.fast_dev_run or trainer.global_step == 0 or run_outcome(trainer)[0] != "finished":
            return  # a stop, a signal or a time limit ends without the (slow) final evaluation
        n = self._n(trainer)
        dm = trainer.datamodule
        val_batches = []
        for i, batch in enumerate(dm.val_dataloader()):
            if i >= n:
                break
            val_batches.append(batch)
        metrics = {"final/train_loss": mean_loss(trainer, pl_module, train_eval_batches(dm, n)),
                   "final/val_loss": mean_loss(trainer, pl_module, val_batches)}
        self.final_metrics = {k: v for k, v in metrics.items() if v is not None}
        for logger in trainer.loggers:
            logger.log_metrics(self.final_metrics, step=trainer.global_step)
        if trainer.is_global_zero:
            from lm_lightning.callbacks.progress import announce_line

            announce_line(f"Final evaluation at step {trainer.global_step} ({n} batches of each split) | "
                          + " | ".join(f"{k.split('/')[1].replace('_', ' ').capitalize()}: {v:.4f}"
                                       for k, v in self.final_metrics.items()))


class EpochEndValidation(pl.Callback):
    """Validate after the last batch of every epoch too, not only every ``val_check_interval``
    steps. Lightning decides in its epoch loop; this widens that decision for this trainer."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        loop = trainer.fit_loop.epoch_loop
        if getattr(loop, "_lm_epoch_end_validation", False):
            return
        decide = loop._should_check_val_fx

        def should_check_val(data_fetcher) -> bool:
            if decide(data_fetcher):
                return True
            return bool(loop.batch_progress.is_last_batch) and loop._should_check_val_epoch()

        loop._should_check_val_fx = should_check_val
        loop._lm_epoch_end_validation = True
