"""Atomic file replacement: a file is either absent, the old version, or the complete new one.

Write to a temporary name in the same directory (same filesystem, so the rename is atomic),
fsync the data, rename over the target, fsync the directory entry. A crash or ``kill -9`` at
any moment leaves the previous file intact; at worst a stale ``*.tmp`` remains.
Kept free of Lightning imports so that small tools and tests can use it cheaply.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any


def tmp_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def fsync_replace(tmp: Path, final: Path) -> None:
    """Flush ``tmp`` to disk, rename it over ``final``, and flush the directory entry."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def link_or_copy(src: Path, dst: Path) -> None:
    """Atomically give ``dst`` the content of ``src``: a hard link when possible (no copy)."""
    tmp = tmp_path(dst)
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    fsync_replace(tmp, dst)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    import torch

    path = Path(path)
    tmp = tmp_path(path)
    torch.save(obj, tmp)
    fsync_replace(tmp, path)
