"""Shared fixtures: compose configs in-process with Hydra's compose API (no subprocess, no chdir)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose(overrides: list[str] | None = None):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides or []))


@pytest.fixture
def make_cfg(tmp_path):
    """Compose a config whose outputs go under tmp_path."""

    def _make(*overrides: str):
        return compose([f"paths.runs_root={tmp_path / 'outputs'}", *overrides])

    return _make


def run_train(args: list[str], cwd: Path, timeout: float = 300, env: dict | None = None, **kw):
    """`python train.py ARGS` in a subprocess (for exit codes, stdout and Hydra's own behaviour)."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env, **kw,
    )
