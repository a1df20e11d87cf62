"""The data contract: what the run, the LightningModule and the callbacks may rely on.

Every data module derives from :class:`LMDataModule` and so answers the same questions
directly (no ``hasattr`` probing between the parts):

- ``task``, ``objectives``: the run's task name and the objectives its batches carry labels for
  (``next_token`` always; Collatz adds ``stopping_time``); ``metric_titles``: how the final
  table names the validation metrics; ``baselines()``: what a model that learned nothing scores.
- ``vocab_size``, ``block_size``, ``batch_size``: the model shape and the micro-batch, so nobody
  types them twice; ``eval_batches``: the cap on validation batches during training (None: all).
- ``tokenizer`` (None where there is none), ``uses_tokenizer`` and ``use_tokenizer(tok)``: text
  data tokenizes with a checkpoint's tokenizer in evaluate/generate, or with ``tokenizer=hf``.
- ``prepare_before_run``: ``prepare_data()`` downloads or tokenizes, so the run calls it before
  its run directory exists (a missing dataset is then exit 2 with nothing written).
- the resume position: micro-batch ``s`` of rank ``r`` is a pure function of (seed, s, r), and a
  resumed run starts at ``start_step()``; ``steps_per_epoch()`` sizes an epoch (None: endless);
  ``state_dict()`` / ``load_state_dict()`` travel in every checkpoint (the tokenizer's spec).
- ``train_eval_batches(n)``: fixed evaluation batches of the training split (callbacks.split_eval);
  ``size_lines()``: what the start-up banner says about the splits' sizes.

The "test falls back to val" rule is :func:`lm_lightning.data.splits.resolve_split`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import lightning.pytorch as pl

from lm_lightning.data.splits import SPLITS, resolve_split
from lm_lightning.errors import UserError

__all__ = ["SPLITS", "LMDataModule", "resolve_split"]


class LMDataModule(pl.LightningDataModule):
    """Base class of every data module; the defaults are those of a module without a tokenizer."""

    task: ClassVar[str] = "lm"
    objectives: ClassVar[list[str]] = ["next_token"]
    metric_titles: ClassVar[dict[str, str]] = {}
    # train() calls prepare_data() before it creates the run directory (downloads, tokenizing).
    prepare_before_run: ClassVar[bool] = False
    # The tokenizer travels with the checkpoints and use_tokenizer() applies.
    uses_tokenizer: ClassVar[bool] = False

    block_size: int
    batch_size: int
    vocab_size: int
    seed: int = 0
    eval_batches: int | None = None
    pin_memory: bool | None = None  # None: pin when CUDA is available

    def set_sizes(self, block_size: int, batch_size: int, min_block: int = 1) -> None:
        """Check and set ``data.block_size`` (at least ``min_block``) and ``data.batch_size``."""
        if block_size < min_block:
            need = "positive" if min_block == 1 else f"at least {min_block}"
            raise ValueError(f"data.block_size must be {need}, got {block_size}")
        if batch_size < 1:
            raise ValueError(f"data.batch_size must be positive, got {batch_size}")
        self.block_size, self.batch_size = int(block_size), int(batch_size)

    # -- tokenizer ---------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return None

    def use_tokenizer(self, tokenizer: Any, vocab_size: int | None = None) -> None:
        """Tokenize with ``tokenizer`` (a checkpoint's, or tokenizer=hf's) instead of the configured one."""
        raise UserError(f"{type(self).__name__} takes no tokenizer: it is not a text data module")

    # -- the resume position -----------------------------------------------------------------
    def rank(self) -> tuple[int, int]:
        """(global rank, world size) of this process; (0, 1) outside a trainer."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def accumulation(self) -> int:
        trainer = self.trainer
        return int(trainer.accumulate_grad_batches) if trainer is not None else 1

    def start_step(self) -> int:
        """Micro-batches this rank has already consumed (non-zero after a resume)."""
        trainer = self.trainer
        if trainer is None:
            return 0
        return trainer.global_step * trainer.accumulate_grad_batches

    def steps_per_epoch(self) -> int | None:
        """Micro-batches per epoch; None for an endless stream."""
        return None

    def pin(self) -> bool:
        """Whether the loaders pin host memory (data.pin_memory; by default when CUDA is there)."""
        if self.pin_memory is not None:
            return bool(self.pin_memory)
        import torch

        return torch.cuda.is_available()

    # -- reports -----------------------------------------------------------------------------
    def baselines(self) -> dict[str, float]:
        """Scores of trivial predictors for the final table; empty (the default): no final table."""
        return {}

    def size_lines(self) -> list[str]:
        """``Train data: N tokens``-style lines for the start-up banner (none by default)."""
        return []

    def train_eval_batches(self, n_batches: int) -> Iterable[dict[str, Any]]:
        """``n_batches`` fixed evaluation batches of the training split, the same every time."""
        raise ValueError(f"{type(self).__name__} has no training-split evaluation (callbacks.split_eval)")

    # -- checkpoint state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Check a checkpoint's data state against this run's (nothing to check by default)."""
