"""Hugging Face hub access that fails fast on machines without internet.

Without a connection the hub clients retry for tens of seconds before giving up. One quick
TCP probe decides instead: when the hub is unreachable (or ``HF_HUB_OFFLINE`` /
``HF_DATASETS_OFFLINE`` is set) the clients are switched to offline mode, so they answer from
the local cache at once or fail with a message that says what is missing.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from urllib.parse import urlparse

log = logging.getLogger("lm_lightning")
_decided: bool | None = None


def _env_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _reachable(timeout: float = 3.0) -> bool:
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname or "huggingface.co", url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def ensure_mode() -> bool:
    """True when the hub is to be used offline (cache only); decided once per process."""
    global _decided
    if _env_offline():
        offline = True
    elif _decided is not None:
        return _decided
    else:
        offline = not _reachable()
        if offline:
            log.info("Hugging Face hub unreachable: using the local cache only")
    if offline:
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            os.environ[key] = "1"
        # Clients that were imported already read these flags at import time.
        for mod, attr in (("huggingface_hub.constants", "HF_HUB_OFFLINE"), ("datasets.config", "HF_HUB_OFFLINE"),
                          ("datasets.config", "HF_DATASETS_OFFLINE"), ("transformers.utils.hub", "_is_offline_mode")):
            m = sys.modules.get(mod)
            if m is not None and hasattr(m, attr):
                setattr(m, attr, True)
    _decided = offline
    return offline
