"""Checkpoints that survive crashes: periodic, best-k, `last`, and a weights-only final model.

Why not Lightning's ModelCheckpoint: in 2.6 it does not refresh `last.ckpt` on every save,
does not fsync, and does not store RNG state. Here every file is written to a temporary name in
the same directory, fsynced and renamed, so a file is either absent or complete; `last.ckpt`
is replaced only after the checkpoint it points to is on disk. Weights that are not finite are
never written, so a NaN can never overwrite the last good checkpoint.

Longer than 300 lines because when to save (periodic, best-k, epoch, last, on demand) and what a
save records (RNG, data position, best-k bookkeeping) are one state machine; how the files land on
disk is :mod:`lm_lightning.callbacks.checkpoint_files`.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

from lm_lightning.atomic import fsync_replace, tmp_path
from lm_lightning.callbacks.checkpoint_files import (
    alias,
    commit_dir,
    full_model_state,
    remove_checkpoint,
    save_safetensors,
    sharded_saves,
)
from lm_lightning.lit.metrics import current_metrics

log = logging.getLogger("lm_lightning")

PERIODIC = re.compile(r"^step-(\d+)\.ckpt$")


def rng_states() -> dict[str, Any]:
    """Python, numpy, torch and CUDA generator states as plain data (weights_only loadable)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_states(states: dict[str, Any]) -> None:
    if "python" in states:
        version, state, gauss = states["python"]
        random.setstate((version, tuple(state), gauss))
    if "numpy" in states:
        name, keys, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        cuda = list(states["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def weights_finite(pl_module: pl.LightningModule) -> bool:
    """One reduction and one host sync: cheap next to writing a checkpoint.

    Under FSDP2 each rank checks its own shards and the ranks agree (one all-reduce), so that
    either every rank writes its part of a sharded checkpoint or none does.
    """
    params = [p for p in pl_module.parameters() if p.is_floating_point()]
    sharded = any(type(p).__name__ == "DTensor" for p in params)
    flags = [torch.isfinite(p.to_local() if type(p).__name__ == "DTensor" else p).all() for p in params]
    ok = torch.stack(flags).all() if flags else torch.tensor(True)
    if sharded and torch.distributed.is_initialized():
        ok = ok.to(torch.int32)
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok)


class Checkpointing(Checkpoint):
    """Periodic (every N optimizer steps / epochs), best-k by a monitored metric, `last`, final.

    Files in ``dirpath``: ``step-<N>.ckpt`` (newest ``keep_last`` kept), ``best-step<N>.ckpt``
    (best ``save_top_k``), ``best.ckpt`` (always the best of them), ``last.ckpt`` (always the
    newest save), and at the end
    ``final.ckpt`` + ``final.safetensors`` (weights only). ``save_now`` is what stop commands,
    signals and time limits call to checkpoint the current step.
    """

    def __init__(self, dirpath: str, every_n_steps: int = 1000, every_n_epochs: int = 0, keep_last: int = 3,
                 monitor: str | None = "val/loss", mode: str = "min", save_top_k: int = 1,
                 save_last: bool = True, final_model: bool = True, epoch_filename: str | None = None) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"checkpointing mode must be 'min' or 'max', got {mode!r}")
        self.dirpath = Path(dirpath).absolute()  # paths in checkpoints and summary.json work from anywhere
        self.every_n_steps, self.every_n_epochs = max(0, int(every_n_steps)), max(0, int(every_n_epochs or 0))
        self.keep_last, self.monitor, self.mode = max(1, int(keep_last)), monitor, mode
        self.save_top_k, self.save_last, self.final_model = int(save_top_k), save_last, final_model
        # Epoch saves under their own name (e.g. "checkpoint_epoch_{epoch}", epoch counted from 1)
        # instead of step-<N>.ckpt; not pruned by keep_last.
        self.epoch_filename = epoch_filename or None
        self.best_k: dict[str, float] = {}  # path -> score
        self.best_model_path = ""
        self.best_model_score: torch.Tensor | None = None
        self.last_model_path = ""
        self.final_model_path = ""
        self.refused = 0  # saves refused because the weights were not finite
        self._last_saved_step = -1
        self._resumed_rng: dict[str, Any] | None = None
        self._train_rng: torch.Tensor | None = None

    # -- writing ------------------------------------------------------------------------------
    def _write(self, trainer: pl.Trainer, path: Path, weights_only: bool = False) -> None:
        tmp = tmp_path(path)
        if sharded_saves(trainer):
            # FSDP2: every rank writes its shard into ``NAME.tmp/``; once all have finished,
            # rank 0 renames the directory to ``NAME``. A crash leaves only a ``*.tmp`` directory,
            # which nothing reads (resume and the readers look for ``*.ckpt``).
            if trainer.is_global_zero and tmp.exists():
                remove_checkpoint(tmp)
            trainer.strategy.barrier("lm_lightning.checkpoint.start")
            trainer.save_checkpoint(tmp, weights_only=weights_only)
            trainer.strategy.barrier("lm_lightning.checkpoint.written")
            if trainer.is_global_zero:
                commit_dir(tmp, path)
        else:
            if trainer.is_global_zero and tmp.is_dir():  # an unfinished sharded save of this name
                remove_checkpoint(tmp)
            trainer.save_checkpoint(tmp, weights_only=weights_only)
            if trainer.is_global_zero:
                if path.is_dir() and not path.is_symlink():  # a sharded save of this name, from an FSDP leg
                    remove_checkpoint(path)
                fsync_replace(tmp, path)
        trainer.strategy.barrier("lm_lightning.checkpoint")
        if trainer.is_global_zero:
            from lm_lightning.callbacks.progress import announce_line

            announce_line(f"Saved checkpoint to {path}")

    def _refuse_poisoned(self, trainer: pl.Trainer, pl_module: pl.LightningModule, why: str) -> bool:
        if weights_finite(pl_module):
            return False
        self.refused += 1
        if trainer.is_global_zero:
            log.warning("not saving the %s checkpoint at step %d: the weights are not finite "
                        "(the previous checkpoints are kept)", why, trainer.global_step)
        return True

    def _point_last(self, trainer: pl.Trainer, src: Path) -> None:
        if self.save_last:
            last = self.dirpath / "last.ckpt"
            if trainer.is_global_zero:
                alias(src, last)
            self.last_model_path = str(last)

    def save_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule, why: str = "requested") -> Path | None:
        """Checkpoint the current step (periodic name, counted in keep_last) and point `last` at it."""
        if trainer.fast_dev_run:  # a pipeline check writes no checkpoints
            return None
        if trainer.global_step == self._last_saved_step and self.last_model_path:
            return Path(self.last_model_path)
        if self._refuse_poisoned(trainer, pl_module, why):
            return None
        path = self.dirpath / f"step-{trainer.global_step}.ckpt"
        self._write(trainer, path)
        self._last_saved_step = trainer.global_step
        self._point_last(trainer, path)
        self._prune_periodic(trainer)
        return path

    def _prune_periodic(self, trainer: pl.Trainer) -> None:
        if not trainer.is_global_zero or not self.dirpath.is_dir():
            return
        periodic = sorted((int(m.group(1)), p) for p in self.dirpath.iterdir() if (m := PERIODIC.match(p.name)))
        for _, p in periodic[:-self.keep_last]:
            remove_checkpoint(p)

    # -- when to save -------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # Validation draws from torch's generator (its dataloader iterator takes a base seed)
        # before any validation hook runs; this snapshot, put back when validation ends, keeps
        # the training stream independent of when (and whether) validation ran, so a resumed
        # run that skips an already-done validation still sees the same dropout masks.
        self._train_rng = torch.get_rng_state()
        # Only on optimizer-step boundaries, so a resume never lands inside an accumulation.
        if self.every_n_steps and trainer.global_step > 0 and (batch_idx + 1) % trainer.accumulate_grad_batches == 0 \
                and trainer.global_step % self.every_n_steps == 0:
            self.save_now(trainer, pl_module, "periodic")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # Once per epoch, after its last batch (and its epoch-end validation, if any), numbered
        # from 1 as the guides number epochs: `checkpoint_epoch_5` is the end of the fifth.
        epoch = trainer.current_epoch + 1
        if not self.every_n_epochs or epoch % self.every_n_epochs or trainer.fast_dev_run:
            return
        if trainer.fit_loop.epoch_loop.batch_progress.current.ready < trainer.num_training_batches:
            return  # max_steps, a stop or a time limit ended this epoch early: it is not an epoch's end
        if not self.epoch_filename:
            self.save_now(trainer, pl_module, "epoch")
            return
        if self._refuse_poisoned(trainer, pl_module, "epoch"):
            return
        path = self.dirpath / f"{self.epoch_filename.format(epoch=epoch, step=trainer.global_step)}.ckpt"
        self._write(trainer, path)
        if trainer.global_step != self._last_saved_step:
            self._last_saved_step = trainer.global_step
            self._point_last(trainer, path)

    def _better(self, a: float, b: float) -> bool:
        return a < b if self.mode == "min" else a > b

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._train_rng is not None and not trainer.sanity_checking:
            torch.set_rng_state(self._train_rng)
        if trainer.sanity_checking or trainer.fast_dev_run or not self.monitor or self.save_top_k == 0:
            return
        value = current_metrics(trainer).get(self.monitor)
        if value is None:
            return
        score = float(value)
        if not np.isfinite(score):
            return
        ranked = sorted(self.best_k.items(), key=lambda kv: kv[1], reverse=self.mode == "max")
        if self.save_top_k > 0 and len(ranked) >= self.save_top_k and not self._better(score, ranked[-1][1]):
            return
        if self._refuse_poisoned(trainer, pl_module, "best"):
            return
        path = self.dirpath / f"best-step{trainer.global_step}.ckpt"
        # Bookkeeping first, so that the checkpoint's own state already counts it among the best.
        self.best_k[str(path)] = score
        ranked = sorted(self.best_k.items(), key=lambda kv: kv[1], reverse=self.mode == "max")
        evicted = [old for old, _ in ranked[self.save_top_k:]] if self.save_top_k > 0 else []
        for old in evicted:
            del self.best_k[old]
        self.best_model_path, best = ranked[0]
        self.best_model_score = torch.tensor(best)
        self._write(trainer, path)
        if trainer.is_global_zero and self.best_model_path == str(path):
            # best.ckpt: the best so far by a fixed name (guide 002's best_model.pth), swapped in
            # atomically like last.ckpt (a hard link, or a symlink to a sharded directory).
            alias(path, self.dirpath / "best.ckpt")
        if trainer.global_step != self._last_saved_step:
            # When this step was already saved during training (a periodic save, or the stop
            # that triggered this validation), `last` keeps that one: its RNG state is the
            # training-time state that an uninterrupted run continues from.
            self._last_saved_step = trainer.global_step
            self._point_last(trainer, path)
        for old in evicted:  # only once the better one is on disk
            if trainer.is_global_zero and old != str(path):
                remove_checkpoint(Path(old))
        if trainer.is_global_zero:
            self._write_index()

    def _write_index(self) -> None:
        """best_k.json beside the checkpoints: a resume from a checkpoint written before the latest
        best one (a periodic save of the same step) still knows every best file and its score."""
        import json

        index = self.dirpath / "best_k.json"
        tmp = tmp_path(index)
        tmp.write_text(json.dumps({"monitor": self.monitor, "mode": self.mode, "best_k": self.best_k}))
        fsync_replace(tmp, index)

    def _read_index(self) -> dict[str, float]:
        import json

        try:
            data = json.loads((self.dirpath / "best_k.json").read_text())
        except (OSError, ValueError):
            return {}
        if data.get("monitor") != self.monitor or data.get("mode") != self.mode:
            return {}
        return {str(k): float(v) for k, v in data.get("best_k", {}).items()}

    def on_train_end(self, trainer, pl_module) -> None:
        """Whatever ended training (max_steps, stop, time limit, early stop), keep the end state."""
        if trainer.global_step > 0:
            self.save_now(trainer, pl_module, "end")
        if self.final_model and trainer.global_step > 0 and not trainer.fast_dev_run and not self._refuse_poisoned(trainer, pl_module, "final"):
            self._write(trainer, self.dirpath / "final.ckpt", weights_only=True)
            state = full_model_state(pl_module)  # a collective under FSDP2: every rank takes part
            if trainer.is_global_zero:
                save_safetensors(pl_module, self.dirpath / "final.safetensors", state)
            self.final_model_path = str(self.dirpath / "final.ckpt")

    # -- state that travels in the checkpoint -------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"best_k": dict(self.best_k), "best_model_path": self.best_model_path,
                "last_model_path": self.last_model_path, "monitor": self.monitor, "mode": self.mode}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # Only files that still exist count: a best checkpoint deleted by hand is forgotten.
        known = {**state.get("best_k", {}), **self._read_index()}
        self.best_k = {p: s for p, s in known.items() if Path(p).exists()}
        if self.best_k:
            ranked = sorted(self.best_k.items(), key=lambda kv: kv[1], reverse=self.mode == "max")
            self.best_model_path, best = ranked[0]
            self.best_model_score = torch.tensor(best)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()
        # The data position: micro-batches consumed; the data module derives its stream from it.
        checkpoint["data_position"] = {"global_step": trainer.global_step,
                                       "micro_batches": trainer.global_step * trainer.accumulate_grad_batches}
        # Saved from on_train_batch_end, Lightning's count of stepped batches lags one step (it is
        # incremented after that hook), so a resumed run would log every metric one step early.
        # With one optimizer it equals the optimizer steps taken.
        epoch_loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.state_dict")
        if isinstance(epoch_loop, dict) and "_batches_that_stepped" in epoch_loop and len(trainer.optimizers) == 1:
            epoch_loop["_batches_that_stepped"] = trainer.global_step

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._resumed_rng = checkpoint.get("rng_states")
        self._last_saved_step = int(checkpoint.get("global_step", -1))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Restored here, not at load time: creating the dataloader iterators draws from torch's
        # generator, and the uninterrupted run had already done that before this step.
        if self._resumed_rng is not None:
            set_rng_states(self._resumed_rng)
            self._resumed_rng = None
