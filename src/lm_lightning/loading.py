"""Loading checkpoints safely, for inference, evaluation and resume checks.

Checkpoints are read with ``torch.load(weights_only=True)``: hyperparameters are plain
containers, so a crafted pickle that would run code is refused instead of executed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lm_lightning.errors import UserError
from lm_lightning.model import GPT, ModelConfig

# Prefixes that wrappers add to parameter names: the LightningModule attribute, torch.compile,
# DDP. Stripped in this order so that any combination loads into a bare GPT.
_PREFIXES = ("model.", "_orig_mod.", "module.")


@dataclass
class LoadedCheckpoint:
    path: Path
    model: GPT
    hparams: dict[str, Any]
    config: dict[str, Any] | None = None  # the resolved run config, when the checkpoint has it
    datamodule_state: dict[str, Any] = field(default_factory=dict)
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
    global_step: int = 0


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True; every failure is a one-line UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, crafted pickle, wrong format
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it contains objects that are not plain data (refused by weights_only loading)"
        raise UserError(f"cannot load checkpoint {p}: {reason}") from exc


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        k = key
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if k.startswith(prefix):
                    k = k[len(prefix):]
                    changed = True
        out[k] = value
    return out


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
    heads = {k: v for k, v in state.items() if k.startswith("regression_head.")}
    model_state = {k: v.float() for k, v in state.items()
                   if not k.startswith(("regression_head.", "val_metrics."))}
    missing, unexpected = model.load_state_dict(model_state, strict=False)
    # Tied output weights appear under one name only; anything else missing is incompatibility.
    missing = [k for k in missing if not (cfg.tie_weights and k == "lm_head.weight")]
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
