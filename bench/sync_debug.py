"""Find host-device synchronisations on the training hot path (CUDA only).

Runs a short trainer run with ``torch.cuda.set_sync_debug_mode("warn")`` after warm-up and
prints where each synchronising call came from (the innermost frames outside torch).
"""

from __future__ import annotations

import collections
import contextlib
import sys
import traceback
import warnings

import lightning.pytorch as pl
import torch

from bench.compose import compose

SITES: collections.Counter = collections.Counter()


class SyncWatch(pl.Callback):
    def __init__(self, start: int = 5) -> None:
        self.start = start

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.start:
            torch.cuda.set_sync_debug_mode("warn")

    def on_train_end(self, trainer, pl_module) -> None:
        torch.cuda.set_sync_debug_mode(0)


def _hook(message, category, filename, lineno, file=None, line=None):
    if "synchronizing" not in str(message).lower() and "sync" not in str(message).lower():
        return
    frames = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename and "warnings" not in f.filename]
    SITES[" <- ".join(f"{f.filename.split('site-packages/')[-1]}:{f.lineno}:{f.name}" for f in frames[-4:][::-1])] += 1


def main() -> None:
    from lm_lightning.train import train

    import bench.sync_debug as me

    overrides = [*sys.argv[1:], "+callbacks.sync_watch._target_=bench.sync_debug.SyncWatch", "logger=csv",
                 "~callbacks.model_checkpoint", "trainer.limit_val_batches=0", "trainer.enable_model_summary=false",
                 "paths.runs_root=/tmp/sync_debug"]
    warnings.showwarning = _hook
    warnings.simplefilter("always")
    with contextlib.redirect_stdout(None):
        train(compose(overrides))
    steps = compose(overrides).trainer.max_steps - 5
    print(f"synchronising calls over {steps} steps:")
    for site, n in me.SITES.most_common(15):
        print(f"{n:6d}  {site}")


if __name__ == "__main__":
    main()
