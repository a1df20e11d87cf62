"""The run directory: where it is, what is written into it first (the saved config, ``train.log``,
the printed config), taking back an empty one after a user error, and how the run ended."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

LOGGERS = ("lm_lightning", "lightning.pytorch")


def output_dir(cfg: DictConfig) -> Path:
    """Hydra's job directory when Hydra runs the task, else ``paths.output_dir``."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path(cfg.paths.output_dir)


def save_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra's output_subdir would write, written only once the config is valid."""
    from hydra.core.hydra_config import HydraConfig

    d = run_dir / ".hydra"
    d.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, d / "config.yaml")
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        OmegaConf.save(OmegaConf.create(list(hc.overrides.task)), d / "overrides.yaml")
        OmegaConf.save(OmegaConf.create({"hydra": OmegaConf.to_container(hc)}), d / "hydra.yaml")


def attach_file_log(run_dir: Path) -> logging.Handler:
    """``train.log``: our log and Lightning's, from here to :func:`detach_file_log`."""
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    for name in LOGGERS:
        logging.getLogger(name).addHandler(handler)
    logging.getLogger("lm_lightning").setLevel(logging.INFO)
    return handler


def detach_file_log(handler: logging.Handler | None) -> None:
    if handler is None:
        return
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(handler)
    handler.close()


def print_config(cfg: DictConfig) -> None:
    """The composed config as a tree, one branch per group."""
    from rich.console import Console
    from rich.syntax import Syntax
    from rich.tree import Tree

    tree = Tree("config", guide_style="dim")
    for key, value in cfg.items():
        branch = tree.add(str(key), style="bold")
        text = OmegaConf.to_yaml(value) if isinstance(value, DictConfig) else str(value)
        branch.add(Syntax(text.rstrip(), "yaml", theme="ansi_dark", background_color="default"))
    Console().print(tree)


def has_content(cfg: DictConfig) -> bool:
    """Whether the run directory already holds something (True when it cannot be told)."""
    try:
        d = output_dir(cfg)
    except Exception:
        return True
    return d.exists() and any(d.iterdir())


def remove_if_empty(cfg: DictConfig, existed: bool) -> None:
    """Hydra creates the job directory before the task runs; take it back if it is still empty."""
    if existed:
        return
    try:
        d = output_dir(cfg)
        if d.exists() and not any(d.iterdir()):
            d.rmdir()
    except Exception:
        pass


def run_outcome(trainer: Any) -> tuple[str, str | None, int | None]:
    """(status, stop reason, exit code) of a finished fit (:mod:`lm_lightning.callbacks.control`)."""
    from lm_lightning.callbacks.control import run_outcome as outcome

    return outcome(trainer)
