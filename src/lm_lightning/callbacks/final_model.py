"""Write the final model to a fixed path when training ends (Fragment_LLM's models/final_model.pt).

The file is :func:`lm_lightning.ckpt.payload.final_payload`: plain containers only (weights,
model config, tokenizer spec, step), so it loads with ``torch.load(weights_only=True)``, and
:func:`lm_lightning.ckpt.load.load_checkpoint` reads it like a Lightning checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl

from lm_lightning.ckpt.payload import final_payload, write_final_model


class FinalModel(pl.Callback):
    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        payload = final_payload(pl_module.state_dict(), pl_module.hparams, trainer.global_step,
                                trainer.datamodule, getattr(pl_module, "run_config", None))
        write_final_model(self.path, payload)
