"""Profile the training hot path on CUDA: host syncs and where time goes.

Runs a short trainer run under torch.profiler for steps [10, 30) and prints
- every synchronising call (``aten::_local_scalar_dense`` = ``.item()``, stream/device
  synchronize, device-to-host copies) grouped by the Python stack that made it;
- the top operators by self CPU and by CUDA time (the "top costs per step" of BENCHMARKS.md).
"""

from __future__ import annotations

import contextlib
import sys

import lightning.pytorch as pl
import torch
from torch.profiler import ProfilerActivity, profile

from bench.compose import compose

SYNC_NAMES = ("aten::_local_scalar_dense", "cudaStreamSynchronize", "cudaDeviceSynchronize", "Memcpy DtoH")
STATE: dict = {}


class ProfileSteps(pl.Callback):
    def __init__(self, start: int = 10, stop: int = 30) -> None:
        self.start, self.stop = start, stop

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.start and "prof" not in STATE:
            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            STATE["prof"] = profile(activities=acts, with_stack=True)
            STATE["prof"].__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.stop and "prof" in STATE and "done" not in STATE:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            STATE["prof"].__exit__(None, None, None)
            STATE["done"] = True


def main() -> None:
    from lm_lightning.run.session import train

    overrides = [*sys.argv[1:], "+callbacks.profile_steps._target_=bench.sync_debug.ProfileSteps", "logger=csv",
                 "~callbacks.checkpointing", "trainer.limit_val_batches=0", "trainer.enable_model_summary=false",
                 "paths.runs_root=/tmp/sync_debug", "trainer.max_steps=35", "trainer.val_check_interval=1000"]
    with contextlib.redirect_stdout(sys.stderr):
        train(compose(overrides))
    import bench.sync_debug as me  # the callback lives in the imported module, not __main__

    prof = me.STATE["prof"]
    steps = 20
    print("synchronising calls over 20 steps, by stack:")
    for evt in prof.key_averages(group_by_stack_n=8):
        if any(n in evt.key for n in SYNC_NAMES):
            stack = " <- ".join(s for s in evt.stack if "site-packages/torch/" not in s)[:600]
            print(f"{evt.count:5d}  {evt.key}  {stack}")
    print("\ntop operators by self CPU time per step (ms):")
    for evt in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]:
        print(f"{evt.self_cpu_time_total / 1000 / steps:8.3f}  {evt.key}")
    print("\ntop kernels/operators by CUDA time per step (ms):")
    for evt in sorted(prof.key_averages(), key=lambda e: -getattr(e, "self_device_time_total", 0))[:8]:
        print(f"{evt.self_device_time_total / 1000 / steps:8.3f}  {evt.key[:90]}")


if __name__ == "__main__":
    main()
