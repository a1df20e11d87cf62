"""Runs of train() inside one torchrun job, for tests/test_fsdp2.py (importing Lightning once per rank).

``torchrun --nproc_per_node=N tests/fsdp2_job.py SPEC.json``: SPEC is a list of runs, each
``{"name": ..., "overrides": [...]}``; every run is ``lm_lightning.run.session.train`` on a config
composed from conf/ with those overrides, all ranks together. The :class:`Recorder` callback
(added through the overrides) writes what the test asserts on.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch


class Recorder(pl.Callback):
    """Per optimizer step: the loss averaged over micro-batches and ranks (the global batch's loss
    when every rank and micro-batch has as many tokens). At the end: what each rank holds."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.losses: dict[int, float] = {}
        self._sum = 0.0
        self._n = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sum += float(pl_module.train_loss)
        self._n += 1
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        loss = torch.tensor([self._sum / self._n], dtype=torch.float64)
        if torch.distributed.is_initialized() and trainer.world_size > 1:
            torch.distributed.all_reduce(loss)
            loss /= trainer.world_size
        self.losses[trainer.global_step] = float(loss)
        self._sum, self._n = 0.0, 0

    def on_train_end(self, trainer, pl_module) -> None:
        from lm_lightning.lit.parallel import local_numel, optimizer_state_numel

        params = list(pl_module.parameters())
        held = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                "param_numel": local_numel(params),
                "param_numel_full": sum(p.numel() for p in params),
                "optimizer_state_numel": optimizer_state_numel(trainer.optimizers[0]),
                "sharded_params": sum(type(p).__name__ == "DTensor" for p in params),
                "checkpointed_blocks": _checkpointed_blocks(pl_module),
                "losses": self.losses}
        Path(f"{self.out}.rank{trainer.global_rank}.json").write_text(json.dumps(held))


def _checkpointed_blocks(pl_module) -> int:
    """Blocks with activation checkpointing applied by parallel.py (torch's composable checkpoint)."""
    from torch.distributed._composable.contract import _get_registry

    return sum("checkpoint" in (_get_registry(b) or {}) for b in pl_module.model.h)


def main(spec_file: str) -> None:
    from hydra import compose, initialize_config_dir

    from lm_lightning.config.location import CONF_DIR
    from lm_lightning.run.session import train

    runs = json.loads(Path(spec_file).read_text())
    for run in runs:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="train", overrides=run["overrides"])
        if run.get("expect_error"):  # every rank must stop with the same one-line error, none hang
            from lm_lightning.errors import UserError

            try:
                train(cfg)
            except UserError as exc:
                Path(f"{run['summary']}.rank{os.environ.get('RANK', '0')}").write_text(str(exc))
            continue
        summary = train(cfg)
        if int(os.environ.get("RANK", "0")) == 0:
            Path(run["summary"]).write_text(json.dumps(summary, default=str))


if __name__ == "__main__":
    main(sys.argv[1])
