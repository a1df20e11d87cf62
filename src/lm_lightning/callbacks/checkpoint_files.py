"""How checkpoint files land on disk: sharded directories, aliases, removal, the final weights.

Every name in ``checkpoints/`` is either absent or complete. A single-file checkpoint is written
to a temporary name and renamed (:mod:`lm_lightning.atomic`); a sharded one (FSDP2) is a
directory, made visible whole by :func:`commit_dir`. ``last.ckpt`` and ``best.ckpt`` are
:func:`alias` es of the checkpoint they name. :class:`~lm_lightning.callbacks.checkpointing.Checkpointing`
decides when to write; this module only knows how.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import lightning.pytorch as pl
import torch

from lm_lightning.atomic import fsync_dir, link_or_copy, tmp_path


def sharded_saves(trainer: pl.Trainer) -> bool:
    """Does this trainer write checkpoints as directories of per-rank shards (FSDP2 + DCP)?"""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(trainer.strategy, ModelParallelStrategy) and \
        bool(getattr(trainer.strategy, "_save_distributed_checkpoint", False))


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint file, a sharded checkpoint directory, or an alias (symlink)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _fsync_tree(directory: Path) -> None:
    for f in directory.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    fsync_dir(directory)


def commit_dir(tmp: Path, final: Path) -> None:
    """Make the complete directory ``tmp`` visible as ``final`` (replacing an older one)."""
    _fsync_tree(tmp)
    old = None
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.is_dir():  # a re-save of the same name: move the old one aside first
        old = final.with_name(final.name + ".old")
        remove_checkpoint(old)
        os.replace(final, old)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    if old is not None:
        remove_checkpoint(old)


def alias(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` (``last.ckpt``) name the checkpoint ``src``.

    A file: a hard link (or copy). A sharded directory: a relative symlink, replaced atomically
    (a directory cannot be hard-linked).
    """
    if not src.is_dir():
        if dst.is_dir() and not dst.is_symlink():
            remove_checkpoint(dst)
        link_or_copy(src, dst)
        return
    if dst.is_dir() and not dst.is_symlink():
        remove_checkpoint(dst)
    tmp = tmp_path(dst)
    remove_checkpoint(tmp)
    os.symlink(os.path.relpath(src, dst.parent), tmp)
    os.replace(tmp, dst)
    fsync_dir(dst.parent)


def full_model_state(pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """The module's full state dict on CPU; under FSDP2 gathered from the shards (every rank must
    call it; rank 0 gets the tensors, the others an empty dict)."""
    if any(type(p).__name__ == "DTensor" for p in pl_module.parameters()):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(pl_module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return pl_module.state_dict()


def save_safetensors(pl_module: pl.LightningModule, path: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """The bare GPT (and heads) in safetensors; a tied lm_head is stored once, under wte."""
    import json

    from lm_lightning.ckpt.payload import write_safetensors
    from lm_lightning.ckpt.state import metric_prefixes

    cfg = getattr(pl_module, "config", None)
    write_safetensors(pl_module.state_dict() if state is None else state, path,
                      bool(cfg is not None and getattr(cfg, "tie_weights", False)),
                      {"model": json.dumps(pl_module.hparams.get("model", {}))}, drop=metric_prefixes(pl_module))
