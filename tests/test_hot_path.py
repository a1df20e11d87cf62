"""The training hot path makes no host-device sync: only log, refresh and check steps read tensors."""

from __future__ import annotations

import collections

import lightning.pytorch as pl
import pytest
import torch
from reliability_helpers import train_run

READS = ("item", "tolist", "__float__", "__int__", "__bool__")  # each waits for the device


class StepOf(pl.Callback):
    """Tracks which training batch is running (None outside training batches)."""

    current: int | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        StepOf.current = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        StepOf.current = None


@pytest.mark.slow
def test_no_host_sync_between_log_steps(tmp_path, monkeypatch):
    import reliability_helpers

    monkeypatch.setattr(reliability_helpers, "StepOf", StepOf, raising=False)
    reads: dict[int, list[str]] = collections.defaultdict(list)
    for name in READS:
        real = getattr(torch.Tensor, name)

        def counting(self, *a, _real=real, _name=name, **k):
            if StepOf.current is not None:
                reads[StepOf.current].append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counting)
    s = train_run(tmp_path, ["trainer.max_steps=12", "trainer.log_every_n_steps=6", "trainer.val_check_interval=100",
                             "trainer.limit_val_batches=0", "callbacks.monitoring.per_layer_every=100",
                             "+callbacks.step_of._target_=reliability_helpers.StepOf"])
    assert s["status"] == "finished"
    # Step 0: per-layer gradient norms (every per_layer_every steps); 5 and 11: log steps, where
    # the anomaly guard also reads its flags; 9: the progress bar's refresh (every 10 batches).
    assert set(reads) <= {0, 5, 9, 11}, dict(reads)
    assert reads[5], "the log step reads the guard's flags (the test would pass vacuously otherwise)"
