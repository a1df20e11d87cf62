"""Where the configs live: the one answer every command (train, evaluate, sweeps) uses."""

from __future__ import annotations

import os
from pathlib import Path


def find_conf_dir() -> Path:
    """$LM_LIGHTNING_CONF if set; else the checkout's ``conf/`` when this package is
    ``<repo>/src/lm_lightning`` (a development or editable install); else the copy shipped
    inside the installed package (``lm_lightning/conf``, see setup.py)."""
    if os.environ.get("LM_LIGHTNING_CONF"):
        return Path(os.environ["LM_LIGHTNING_CONF"])
    package = Path(__file__).resolve().parents[1]
    repo_conf = package.parents[1] / "conf"
    if package.parent.name == "src" and (repo_conf / "train.yaml").is_file():
        return repo_conf
    from importlib.resources import files

    return Path(str(files("lm_lightning") / "conf"))


CONF_DIR = find_conf_dir()
