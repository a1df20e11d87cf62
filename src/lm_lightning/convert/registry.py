"""Every Hugging Face architecture we convert, by name, by model shape and by ``model.init_from`` source.

- ``for_name("llama")``: the converter of a preset / transformers ``model_type``;
- ``for_config(cfg)``: the first converter whose shape a ModelConfig has (export), with each one's problems;
- ``for_source(init_from)``: the converter of a local transformers folder or hub name, from its config.json.

Adding an architecture is one Converter subclass (convert/base.py) and one line in ``CONVERTERS``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lm_lightning.convert.base import Converter
from lm_lightning.convert.gpt2 import GPT2
from lm_lightning.convert.llama import LLAMA
from lm_lightning.errors import UserError

# A model has at most one of these shapes (they differ in positions, norms and MLP).
CONVERTERS: dict[str, Converter] = {c.name: c for c in (LLAMA, GPT2)}


def for_name(arch: str) -> Converter:
    try:
        return CONVERTERS[arch]
    except KeyError:
        raise UserError(f"no Hugging Face converter for {arch!r}; known: {', '.join(CONVERTERS)}") from None


def shape_problems(cfg: Any) -> dict[str, list[str]]:
    """Per converter, why ``cfg`` is not its shape (an empty list: it is)."""
    return {name: c.shape_problems(cfg) for name, c in CONVERTERS.items()}


def for_config(cfg: Any) -> tuple[Converter | None, dict[str, list[str]]]:
    """(the converter whose shape ``cfg`` has, or None; the problems for each converter)."""
    problems = shape_problems(cfg)
    return next((CONVERTERS[k] for k, v in problems.items() if not v), None), problems


def read_hf_config(name: str) -> dict[str, Any] | None:
    """config.json of a local folder or a hub name (cache first); None when the hub has no answer.

    A folder without config.json or with unreadable JSON is a UserError. A hub name that cannot
    be fetched returns None: the weights loader reports it with the offline message.
    """
    p = Path(name)
    if p.is_dir():
        f = p / "config.json"
        if not f.is_file():
            raise UserError(f"model.init_from={name}: no config.json in that folder (expected a transformers "
                            f"model folder, e.g. from save_pretrained or lm_lightning.export)")
        try:
            return json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"model.init_from={name}: cannot read config.json ({exc})") from exc
    from lm_lightning.data.hub import ensure_mode

    ensure_mode()
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(name, "config.json")).read_text())
    except Exception:
        return None


def for_hf_config(d: dict[str, Any] | None, name: str) -> Converter:
    """The converter of a config.json dict; GPT-2 when there is none (its loader reports the offline error)."""
    kind = (d or {}).get("model_type", "gpt2")
    found = next((c for c in CONVERTERS.values() if c.hf_model_type == kind), None)
    if found is None:
        arch = ", ".join((d or {}).get("architectures") or []) or "unknown class"
        known = " and ".join(f"{c.label} ({c.hf_architecture})" for c in CONVERTERS.values())
        raise UserError(f"model.init_from={name}: a {kind!r} model ({arch}); only {known} folders load")
    return found


def for_source(name: str) -> Converter:
    """The converter for ``model.init_from=NAME`` (a transformers folder or hub name)."""
    return for_hf_config(read_hf_config(name), name)
