"""A checkpoint as a model ready for inference, with what travelled with it (config, tokenizer, heads).

``load_checkpoint`` gives the transformer (eval mode, CPU, fp32) of a Lightning checkpoint, a
sharded checkpoint directory or a final-model file; ``load_for_inference`` adds the device and
the tokenizer, for the evaluate / generate / export commands.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lm_lightning.ckpt.read import read_checkpoint
from lm_lightning.ckpt.state import HEADS, missing_but_tied, strip_prefixes
from lm_lightning.errors import UserError
from lm_lightning.model import GPT, ModelConfig

# The LightningModule's metric states (torchmetrics) travel in its state dict; they are not weights.
METRIC_STATES = ("val_metrics.",)


@dataclass
class LoadedCheckpoint:
    path: Path
    model: GPT
    hparams: dict[str, Any]
    config: dict[str, Any] | None = None  # the resolved run config, when the checkpoint has it
    datamodule_state: dict[str, Any] = field(default_factory=dict)
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    global_step: int = 0


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """The transformer (eval mode, CPU, fp32) and what travels with it."""
    ckpt = read_checkpoint(path)
    hparams = ckpt.get("hyper_parameters") or {}
    if "model" not in hparams:
        raise UserError(f"checkpoint {path} has no model hyperparameters; is it an lm_lightning checkpoint?")
    try:
        cfg = ModelConfig.from_dict(dict(hparams["model"]))
    except (TypeError, ValueError) as exc:
        raise UserError(f"checkpoint {path} has an invalid model config: {exc}") from exc
    model = GPT(cfg)
    state = strip_prefixes(ckpt.get("state_dict", {}))
    heads = {k: v for k, v in state.items() if k.startswith(HEADS)}
    model_state = {k: v.float() for k, v in state.items() if not k.startswith(HEADS + METRIC_STATES)}
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    # Tied output weights appear under one name only; anything else missing is incompatibility.
    missing = missing_but_tied(missing, cfg.tie_weights)
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path} does not match its model config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.eval()
    dm_state = {k: v for k, v in ckpt.items() if k.endswith("DataModule") or k == "datamodule"}
    return LoadedCheckpoint(
        path=Path(path),
        model=model,
        hparams=hparams,
        config=ckpt.get("run_config"),
        datamodule_state=next(iter(dm_state.values()), {}) if dm_state else {},
        heads=heads,
        global_step=int(ckpt.get("global_step", 0)),
    )


def checkpoint_tokenizer(loaded: LoadedCheckpoint, text_only: bool = False) -> Any:
    """The tokenizer a checkpoint was trained with, rebuilt (None when it cannot be).

    Text runs: the spec the text data module saved in the checkpoint. Collatz runs: the parity
    tokenizer, unless ``text_only`` (the text commands: evaluate, generate, export).
    """
    target = str(((loaded.config or {}).get("data") or {}).get("_target_", ""))
    if target.endswith("CollatzDataModule") and not text_only:
        from lm_lightning.data.parity import ParityTokenizer

        return ParityTokenizer()
    from lm_lightning.data.tokenizers import from_spec

    return from_spec((loaded.datamodule_state or {}).get("tokenizer"))


@dataclass
class Inference:
    loaded: LoadedCheckpoint
    tokenizer: Any  # None when the checkpoint carries no tokenizer (token files without one)

    @property
    def model(self) -> GPT:
        return self.loaded.model


def load_for_inference(path: str | None, device: str = "cpu") -> Inference:
    if not path:
        raise UserError("ckpt=PATH is required")
    loaded = load_checkpoint(path)
    if device != "cpu":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device={device} but no CUDA GPU is available; use device=cpu")
        loaded.model.to(device)
    return Inference(loaded=loaded, tokenizer=checkpoint_tokenizer(loaded, text_only=True))
