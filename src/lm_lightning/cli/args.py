"""``key=value`` arguments of the evaluate / generate / export commands (the checkpoint they
load comes from :func:`lm_lightning.ckpt.load.load_for_inference`)."""

from __future__ import annotations

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
