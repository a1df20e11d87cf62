"""Helpers for the experiments/sweeps tests: in-process Hydra runs with the runtime context set.

Kept out of conftest.py on purpose (the foundation owns it); imported by name.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# A few seconds per run on a 2-core CPU.
TINY = ["model=tiny", "trainer=debug", "data.batch_size=8", "data.block_size=16", "data.val_samples=16"]


def compose(overrides: list[str] | None = None):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides or []))


def run_main(monkeypatch, argv: list[str]) -> None:
    """`python train.py ARGV` in this process (Hydra's own multirun/sweeper machinery included).

    Afterwards Hydra's singletons are reset so later compose-API tests do not see this run's
    job directory.
    """
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from lm_lightning.cli import train as train_mod

    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    try:
        train_mod.main()
    finally:
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None
