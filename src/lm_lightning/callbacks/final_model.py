"""Write the final model to a fixed path when training ends (Fragment_LLM's models/final_model.pt).

The file holds plain containers only (weights, model config, tokenizer spec, step), so it
loads with ``torch.load(weights_only=True)``; ``lm_lightning.loading.load_checkpoint`` reads it
like a Lightning checkpoint (``state_dict``, ``hyper_parameters``, datamodule state).
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning.pytorch as pl
import torch


class FinalModel(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        dm = trainer.datamodule
        payload = {
            "state_dict": {k: v.detach().cpu() for k, v in pl_module.state_dict().items()},
            "hyper_parameters": dict(pl_module.hparams),
            "global_step": trainer.global_step,
        }
        if dm is not None:
            payload[type(dm).__qualname__] = dm.state_dict()
        run_config = getattr(pl_module, "run_config", None)
        if run_config is not None:
            payload["run_config"] = run_config
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f"{self.path.name}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, self.path)
