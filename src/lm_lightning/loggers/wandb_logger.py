"""The W&B logger, offline unless there is a way to authenticate.

``WANDB_MODE`` (online, offline, disabled), when set, decides. Otherwise the run is online only
when an API key is available (``WANDB_API_KEY`` or a ``~/.netrc`` entry from ``wandb login``),
so a machine without credentials or network never blocks on a login prompt.
"""

from __future__ import annotations

import netrc
import os
from typing import Any


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str:
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("online", "offline", "disabled", "dryrun"):
        return "offline" if mode == "dryrun" else mode
    return "online" if has_api_key() else "offline"


def wandb_logger(save_dir: str, project: str = "lm_lightning", name: str | None = None, **kwargs: Any):
    from lightning.pytorch.loggers import WandbLogger

    os.makedirs(save_dir, exist_ok=True)
    mode = wandb_mode()
    # The logger passes unknown keyword arguments on to wandb.init.
    if mode == "disabled":
        kwargs["mode"] = "disabled"
    return WandbLogger(save_dir=save_dir, project=project, name=name, offline=mode == "offline", **kwargs)
