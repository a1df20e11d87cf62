"""What identifies token data, for the cache and for ``prepare tokenize`` alike (no torch here).

- :func:`tokenizer_key`: a tokenizer's spec as it enters a cache key or a shard folder's
  ``meta.json`` (a BPE's JSON is hashed, not embedded);
- :func:`digest`: the short hash of a key;
- :func:`dtype_for_vocab`: uint16 while every id fits, else uint32.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np


def digest(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def tokenizer_key(spec: dict[str, Any]) -> dict[str, Any]:
    """What identifies a tokenizer in a cache key (a BPE's JSON is hashed, not embedded)."""
    out = {k: v for k, v in spec.items() if k != "json"}
    if "json" in spec:
        out["json_sha"] = digest(spec["json"], 32)
    return out


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)
