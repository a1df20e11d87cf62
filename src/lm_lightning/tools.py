"""What the evaluate / generate / export commands share: ``key=value`` arguments and a
checkpoint loaded for inference together with the tokenizer that travelled with it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lm_lightning.errors import UserError


def parse_args(argv: list[str], known: dict[str, Any], usage: str,
               passthrough: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[str]]:
    """``key=value`` arguments: known keys typed like their defaults; keys starting with a
    ``passthrough`` prefix are returned as Hydra overrides. ``None`` defaults mean required
    when the key is listed in ``required``."""
    values = dict(known)
    overrides: list[str] = []
    for arg in argv:
        if arg in ("-h", "--help"):
            print(usage)
            raise SystemExit(0)
        key, sep, raw = arg.partition("=")
        key = key.lstrip("+")
        if not sep:
            raise UserError(f"expected key=value, got {arg!r}; usage: {usage}")
        if key.split(".")[0] in passthrough:
            overrides.append(arg)
            continue
        if key not in known:
            raise UserError(f"unknown argument {key!r}; known: {', '.join(sorted(known))}")
        values[key] = _convert(key, raw, known[key])
    return values, overrides


def _convert(key: str, raw: str, default: Any) -> Any:
    if raw.lower() in ("null", "none") and not isinstance(default, str):
        return None
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
    except ValueError as exc:
        raise UserError(f"{key} must be a {type(default).__name__}, got {raw!r}") from exc
    return raw


@dataclass
class Inference:
    loaded: Any  # LoadedCheckpoint
    tokenizer: Any  # None when the checkpoint carries no tokenizer (token files without one)

    @property
    def model(self):
        return self.loaded.model


def tokenizer_of(loaded: Any):
    """Rebuild the tokenizer stored in a checkpoint's datamodule state (None if there is none)."""
    from lm_lightning.data.tokenizers import from_spec

    return from_spec((loaded.datamodule_state or {}).get("tokenizer"))


def load_for_inference(path: str | None, device: str = "cpu") -> Inference:
    from lm_lightning.loading import load_checkpoint

    if not path:
        raise UserError("ckpt=PATH is required")
    loaded = load_checkpoint(path)
    if device != "cpu":
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device={device} but no CUDA GPU is available; use device=cpu")
        loaded.model.to(device)
    return Inference(loaded=loaded, tokenizer=tokenizer_of(loaded))
