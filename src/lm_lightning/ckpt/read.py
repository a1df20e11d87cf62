"""Reading a checkpoint file or a sharded (FSDP2) checkpoint directory, safely.

Checkpoints are read with ``torch.load(weights_only=True)``: hyperparameters are plain
containers, so a crafted pickle that would run code is refused instead of executed. Every
failure is a one-line UserError.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lm_lightning.errors import UserError

# A sharded (FSDP2, distributed-checkpoint) save is a directory: one ``__<rank>_0.distcp`` per
# rank, DCP's ``.metadata`` index and Lightning's ``meta.pt`` (everything but weights and
# optimizer state). It only gets its ``.ckpt`` name once complete (callbacks/checkpointing.py).
SHARDED_META = "meta.pt"
DCP_INDEX = ".metadata"


def is_sharded(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / SHARDED_META).is_file() and (p / DCP_INDEX).is_file()


def read_meta(p: Path) -> dict[str, Any]:
    """A sharded checkpoint's ``meta.pt``: everything but the weights and optimizer state."""
    try:
        return torch.load(p / SHARDED_META, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load sharded checkpoint {p}: {SHARDED_META}: {reason}") from exc


def sharded_keys(path: str | Path) -> set[str]:
    """Top-level entries of a sharded checkpoint's tensors ("state_dict", "optimizer_0", ...)."""
    from torch.distributed.checkpoint import FileSystemReader

    try:
        names = FileSystemReader(str(path)).read_metadata().state_dict_metadata
    except Exception as exc:
        raise UserError(f"cannot read sharded checkpoint {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    return {k.split(".", 1)[0] for k in names}


def read_sharded(path: str | Path, optimizer: bool = False) -> dict[str, Any]:
    """A sharded checkpoint directory consolidated in this one process, in the single-file format.

    Full tensors on the CPU from every rank's shard (no process group needed), whatever the
    number of ranks that wrote it. ``optimizer=True`` also converts the optimizer states from
    DCP's parameter-name keys to torch's numbered form, so a one-process (or DDP) trainer can
    resume from it.
    """
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    p = Path(path)
    meta = read_meta(p)
    wanted = {"state_dict"}
    if optimizer:
        wanted |= {k for k in sharded_keys(p) if k.startswith("optimizer_")}
    tensors: dict[str, Any] = {}
    try:
        _load_state_dict(tensors, storage_reader=FileSystemReader(str(p)),
                         planner=_EmptyStateDictLoadPlanner(keys=wanted), no_dist=True)
    except Exception as exc:  # a missing or truncated shard file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load sharded checkpoint {p}: {reason}") from exc
    out = dict(meta)
    out["state_dict"] = tensors.get("state_dict", {})
    optims = sorted((k for k in tensors if k.startswith("optimizer_")), key=lambda k: int(k.split("_")[1]))
    if optims:
        out["optimizer_states"] = [numbered_optimizer_state(tensors[k]) for k in optims]
    return out


def numbered_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """DCP's optimizer state (keyed by parameter name) in torch's form (keyed by position).

    torch numbers parameters in the order of ``param_groups[*]["params"]``, which DCP keeps as
    names in that same order; so position i is the i-th name.
    """
    ids: dict[str, int] = {}
    groups = []
    for group in state.get("param_groups", []):
        numbered = []
        for name in group["params"]:
            ids.setdefault(name, len(ids))
            numbered.append(ids[name])
        groups.append({**group, "params": numbered})
    per_param = {ids[name]: value for name, value in state.get("state", {}).items() if name in ids}
    return {"state": per_param, "param_groups": groups}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """torch.load with weights_only=True; every failure is a one-line UserError.

    A sharded checkpoint directory is consolidated (model weights and metadata, no optimizer).
    """
    p = Path(path)
    if p.is_dir():
        if not is_sharded(p):
            raise UserError(f"checkpoint {p} is a directory but not a complete sharded checkpoint "
                            f"(it needs {SHARDED_META} and {DCP_INDEX})")
        return read_sharded(p)
    if not p.is_file():
        raise UserError(f"checkpoint not found: {p}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, crafted pickle, wrong format
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            reason = "it contains objects that are not plain data (refused by weights_only loading)"
        raise UserError(f"cannot load checkpoint {p}: {reason}") from exc
