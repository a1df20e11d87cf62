"""Token files on disk and the windows that batches are cut from.

A token file is a flat array of uint16 or uint32 ids: ``.npy`` (dtype in its header) or raw
``.bin`` / ``.ids`` (dtype from a ``<file>.json`` sidecar written by ``prepare tokenize``, or
from ``data.dtype``). Windows are read with positional reads (``os.pread``), never through a
long-lived memory map: resident memory stays flat however large the file, and each
dataloader worker opens its own file descriptor on first use (nothing is copied to workers).

Several files (a glob, or the ``train_*`` / ``val_*`` shards of a folder written by
``prepare tokenize out=DIR``) are read as one array, their concatenation (:class:`TokenShards`):
a training window starts anywhere in it, so shards are drawn in proportion to their sizes, and
evaluation covers every file whole. A window may run from one shard into the next: shards are
consecutive pieces of one token stream.

Training windows are random contiguous ``block_size + 1`` tokens; micro-batch ``s`` of rank
``r`` (of ``R``) draws its starts from a generator seeded by ``(seed, s, r)``, so a resumed
run sees exactly the batches an uninterrupted one would, and ranks differ. With
``doc_starts`` (``data.bos_aligned``) each window starts at a document start drawn uniformly
from those that leave a full window, the same pure function of (seed, s, r); a document
shorter than the window runs on into the next one (after its end-of-text token). Evaluation
windows are sequential and non-overlapping and cover the whole split: every token after the
first is predicted exactly once.

(A little over 300 lines: the file readers and the two window kinds share one indexing
convention, kept in one place.)
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

from lm_lightning.data.streams import worker_steps
from lm_lightning.errors import UserError
from lm_lightning.lit.objectives import IGNORE_INDEX

DTYPES = {"uint16": np.uint16, "uint32": np.uint32, "int32": np.int32, "int64": np.int64}


def read_meta(path: str | Path) -> dict[str, Any]:
    """The ``<file>.json`` sidecar written next to a token file (empty when there is none)."""
    side = Path(f"{path}.json")
    if not side.is_file():
        return {}
    try:
        return json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {side}: {exc}") from exc


class TokenFile:
    """A flat token array read by position. Picklable: the descriptor is reopened per process."""

    def __init__(self, path: str | Path, dtype: str | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"token file not found: {self.path}")
        self.offset = 0
        if self.path.suffix == ".npy":
            arr = np.load(self.path, mmap_mode="r")
            if arr.ndim != 1:
                raise UserError(f"{self.path}: expected a 1-D token array, got shape {arr.shape}")
            self.dtype, self.offset = arr.dtype, int(arr.offset)
            del arr
        else:
            name = dtype or read_meta(self.path).get("dtype")
            if name is None:
                raise UserError(f"{self.path}: token dtype unknown (no {self.path.name}.json sidecar); "
                                f"set data.dtype=uint16 or data.dtype=uint32")
            if str(name) not in DTYPES:
                raise UserError(f"data.dtype must be one of {list(DTYPES)}, got {name!r}")
            self.dtype = np.dtype(DTYPES[str(name)])
        size = self.path.stat().st_size - self.offset
        if size % self.dtype.itemsize:
            raise UserError(f"{self.path}: size {size} is not a multiple of {self.dtype} ({self.dtype.itemsize} bytes)")
        self.length = size // self.dtype.itemsize
        self._fd: int | None = None
        self._pid = -1

    def __len__(self) -> int:
        return self.length

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"], state["_pid"] = None, -1
        return state

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
        return self._fd

    def read(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start + count) as int64."""
        nbytes = count * self.dtype.itemsize
        pos = self.offset + start * self.dtype.itemsize
        fd = self._descriptor()
        if hasattr(os, "pread"):
            buf = os.pread(fd, nbytes, pos)
        else:  # pragma: no cover - Windows
            os.lseek(fd, pos, os.SEEK_SET)
            buf = os.read(fd, nbytes)
        if len(buf) != nbytes:
            raise UserError(f"{self.path}: short read at token {start} (file changed?)")
        return np.frombuffer(buf, dtype=self.dtype).astype(np.int64)

    def max_id(self, block: int = 1 << 24) -> int:
        """Largest id in the file, streamed block by block."""
        m = 0
        for s in range(0, self.length, block):
            m = max(m, int(self.read(s, min(block, self.length - s)).max()))
        return m

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None


class TokenShards:
    """Token files read as their concatenation, by position. Picklable like :class:`TokenFile`."""

    def __init__(self, files: list[TokenFile], path: str | Path) -> None:
        if not files:
            raise UserError(f"{path}: no token files")
        dtypes = {f.dtype for f in files}
        if len(dtypes) > 1:
            raise UserError(f"{path}: the token files mix dtypes {sorted(str(d) for d in dtypes)}")
        self.files, self.path, self.dtype = files, Path(path), files[0].dtype
        self.starts = np.cumsum([0] + [len(f) for f in files])
        self.length = int(self.starts[-1])

    def __len__(self) -> int:
        return self.length

    def read(self, start: int, count: int) -> np.ndarray:
        """Tokens [start, start + count) of the concatenation as int64."""
        if start < 0 or start + count > self.length:
            raise UserError(f"{self.path}: read past the end (token {start + count} of {self.length})")
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        while count > 0:
            f, local = self.files[i], start - int(self.starts[i])
            take = min(count, len(f) - local)
            if take > 0:
                parts.append(f.read(local, take))
            start, count, i = start + take, count - take, i + 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def max_id(self) -> int:
        return max(f.max_id() for f in self.files)

    def close(self) -> None:
        for f in self.files:
            f.close()


def shard_dir_meta(path: str | Path) -> dict[str, Any]:
    """``meta.json`` of a finished shard folder (a one-line error otherwise)."""
    path = Path(path)
    meta = path / "meta.json"
    if not path.is_dir():
        raise UserError(f"data.path={path}: not a folder (a shard folder written by prepare tokenize out=DIR)")
    if not meta.is_file():
        hint = ("its tokenization did not finish: rerun the same prepare tokenize command to complete it"
                if (path / "plan.json").is_file() else "write one with python -m lm_lightning.prepare tokenize ... "
                                                      "out=DIR")
        raise UserError(f"data.path={path} has no meta.json; {hint}")
    try:
        return json.loads(meta.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {meta}: {exc}") from exc


def open_shard_split(path: str | Path, split: str) -> TokenShards | None:
    """The ``split`` shards of a shard folder (None when it has none, e.g. no validation)."""
    meta = shard_dir_meta(path)
    names = meta.get("shards", {}).get(split) or []
    if not names:
        return None
    return TokenShards([TokenFile(Path(path) / n, meta.get("dtype")) for n in names], Path(path) / f"{split}_*")


def open_tokens(spec: Any, dtype: str | None = None, what: str = "data.train_path") -> TokenFile | TokenShards:
    """A token file, a glob of them (read as one array) or a list of paths."""
    import glob as globlib

    patterns = [spec] if isinstance(spec, str | os.PathLike) else list(spec)
    paths: list[str] = []
    for pat in patterns:
        pat = os.path.expanduser(str(pat))
        if globlib.has_magic(pat):
            found = sorted(p for p in globlib.glob(pat) if os.path.isfile(p) and not p.endswith(".json"))
            if not found:
                raise UserError(f"{what}: no token file matches {pat}")
            paths += found
        else:
            paths.append(pat)
    if len(paths) == 1:
        return TokenFile(paths[0], dtype)
    return TokenShards([TokenFile(p, dtype) for p in paths], str(spec))


def augment(window: np.ndarray, rng: np.random.Generator, p: float, length: int) -> np.ndarray | None:
    """Random deletion then duplication of tokens with probability p (the guides' recipe)."""
    keep = window[rng.random(window.shape[0]) >= p]
    dup = rng.random(keep.shape[0]) < p
    out = np.repeat(keep, 1 + dup.astype(np.int64))
    return out[:length] if out.shape[0] >= length else None


class RandomWindows(IterableDataset):
    """Endless-by-epochs training stream of random windows; see the module docstring.

    An epoch is ``steps_per_epoch`` micro-batches of the global stream (about one pass over
    the split's tokens). ``start`` is the first micro-batch to produce (the resume position);
    the iterator stops at the end of the epoch that contains it.
    """

    def __init__(self, tokens: TokenFile, batch_size: int, block_size: int, seed: int,
                 steps_per_epoch: int, rank: int = 0, world_size: int = 1, start: int = 0,
                 augment_p: float = 0.0, doc_starts: np.ndarray | None = None,
                 seq_warmup: tuple[int, int, int] | None = None) -> None:
        if len(tokens) < block_size + 2:
            raise UserError(f"{tokens.path}: {len(tokens)} tokens is too few for data.block_size={block_size}")
        self.tokens, self.batch_size, self.block_size = tokens, batch_size, block_size
        self.seed, self.steps_per_epoch = seed, max(1, steps_per_epoch)
        self.rank, self.world_size, self.start, self.augment_p = rank, world_size, start, augment_p
        self.span = min(2 * (block_size + 1) if augment_p > 0 else block_size + 1, len(tokens))
        # Document starts that leave a full window (0 always does).
        self.doc_starts = None if doc_starts is None else doc_starts[doc_starts <= len(tokens) - self.span]
        # (start length, warmup optimizer steps, micro-batches per optimizer step); None or 0 steps: off
        self.seq_warmup = seq_warmup

    def length(self, step: int) -> int:
        """Window length of micro-batch ``step``: block_size, or during a sequence-length warmup a length
        growing linearly with the optimizer step from the start length, in multiples of 8."""
        if not self.seq_warmup or self.seq_warmup[1] <= 0:
            return self.block_size
        start, steps, accum = self.seq_warmup
        t = step // max(1, accum)
        if t >= steps:
            return self.block_size
        grown = start + (self.block_size - start) * t // steps
        return min(self.block_size, max(start, grown // 8 * 8))

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        """Micro-batch ``step`` of this rank: a pure function of (seed, step, rank)."""
        rng = np.random.default_rng([self.seed, step, self.rank])
        T = self.length(step) + 1
        # With augmentation read twice the length: deletions must still leave T tokens.
        span = self.span
        if self.doc_starts is not None:
            starts = self.doc_starts[rng.integers(0, len(self.doc_starts), size=self.batch_size)]
        else:
            starts = rng.integers(0, len(self.tokens) - span + 1, size=self.batch_size)
        rows = []
        for s in starts:
            w = self.tokens.read(int(s), span)
            if self.augment_p > 0:
                a = augment(w, rng, self.augment_p, T)
                w = a if a is not None else w[:T]
            rows.append(w[:T])
        x = torch.from_numpy(np.stack(rows))
        return {"input_ids": x[:, :-1].contiguous(), "labels": x[:, 1:].contiguous()}

    def __iter__(self):
        end = (self.start // self.steps_per_epoch + 1) * self.steps_per_epoch
        return map(self.batch, worker_steps(self.start, end))

    def __len__(self) -> int:
        return self.steps_per_epoch


class SequentialWindows(Dataset):
    """Non-overlapping windows covering the split, served as batches (item i = batch i).

    Window k holds tokens [k*T, k*T + T + 1). The tail that does not fill a window gets one
    more window aligned to the end of the file, whose already-predicted positions are masked
    with -100, so each token after the first is a label exactly once. ``max_batches`` keeps
    that many batches spread evenly over the split (a cheap, representative estimate during
    training); None keeps all.
    """

    def __init__(self, tokens: TokenFile, batch_size: int, block_size: int,
                 max_batches: int | None = None) -> None:
        n, T = len(tokens), block_size
        if n < 2:
            raise UserError(f"{tokens.path}: an evaluation split needs at least 2 tokens, got {n}")
        self.tokens, self.batch_size = tokens, batch_size
        self.T = min(T, n - 1)
        full = (n - 1) // self.T
        starts = [k * self.T for k in range(full)]
        self.masked: dict[int, int] = {}
        covered = full * self.T  # labels for positions 1..covered are done
        if covered < n - 1:
            tail = n - 1 - self.T
            starts.append(tail)
            self.masked[tail] = covered - tail  # label positions already covered
        self.starts = np.asarray(starts, dtype=np.int64)
        n_batches = math.ceil(len(self.starts) / batch_size)
        self.batches = [self.starts[i * batch_size:(i + 1) * batch_size] for i in range(n_batches)]
        if max_batches is not None and 0 < max_batches < n_batches:
            keep = np.unique(np.linspace(0, n_batches - 1, max_batches).round().astype(int))
            self.batches = [self.batches[i] for i in keep]

    def __len__(self) -> int:
        return len(self.batches)

    def num_labels(self) -> int:
        return sum(self.T - self.masked.get(int(s), 0) for b in self.batches for s in b)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rows = [self.tokens.read(int(s), self.T + 1) for s in self.batches[i]]
        x = torch.from_numpy(np.stack(rows))
        labels = x[:, 1:].clone()
        for r, s in enumerate(self.batches[i]):
            m = self.masked.get(int(s), 0)
            if m:
                labels[r, :m] = IGNORE_INDEX
        return {"input_ids": x[:, :-1].contiguous(), "labels": labels}
