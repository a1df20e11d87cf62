"""Tokenize a split once into a flat uint16/uint32 token file; later runs reuse it.

The cache file is keyed by (source identity, split, tokenizer): change a file, the split,
the tokenizer or the document-boundary settings (part of the source identity) and a new file
is written; otherwise it is reused. Document chunks get the tokenizer's end-of-text id
between their documents (see :mod:`lm_lightning.data.documents`). Large splits are tokenized
in several processes (each rebuilds the tokenizer from its plain spec), chunk by chunk, in
order, with a bounded number of chunks in flight so memory stays small; a rich progress bar
counts characters. Files are written under a temporary name and renamed when complete, so an
interrupted run never leaves a truncated cache behind.
"""

from __future__ import annotations

import json
import os
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lm_lightning.data.documents import chunk_chars, encode_chunk
from lm_lightning.data.formats import digest, dtype_for_vocab, tokenizer_key
from lm_lightning.data.tokenizers import from_spec

# Below this many bytes a split is tokenized in this process: starting workers costs more.
PARALLEL_MIN_BYTES = 16 << 20


def cache_path(cache_dir: str | Path, identity: dict[str, Any], split: str, spec: dict[str, Any]) -> Path:
    key = digest({"source": identity, "split": split, "tokenizer": tokenizer_key(spec)})
    return Path(cache_dir) / f"{split}-{spec['kind']}-{key}.bin"


_worker_tok = None


def _init_worker(spec: dict[str, Any]) -> None:
    global _worker_tok
    _worker_tok = from_spec(spec)


def _encode_chunk(chunk: Any) -> np.ndarray:
    return encode_chunk(_worker_tok, chunk)


def _progress(total: int | None, description: str, enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=Console(stderr=True), disable=not enabled, transient=True)


def write_tokens(chunks: Iterator[Any], tokenizer: Any, out: str | Path, vocab_size: int,
                 workers: int = 1, total_chars: int | None = None, description: str = "tokenizing",
                 meta: dict[str, Any] | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Tokenize text chunks into ``out`` (raw ids) plus an ``out.json`` sidecar; returns the sidecar."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dtype = dtype_for_vocab(vocab_size)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    count = 0
    show = sys.stderr.isatty() if progress is None else progress
    with open(tmp, "wb") as fh, _progress(total_chars, description, show) as bar:
        task = bar.add_task(description, total=total_chars)

        def emit(text_len: int, ids: np.ndarray) -> None:
            nonlocal count
            if ids.size and int(ids.max()) >= vocab_size:
                raise ValueError(f"token id {int(ids.max())} >= vocab_size {vocab_size}")
            fh.write(ids.astype(dtype).tobytes())
            count += int(ids.size)
            bar.advance(task, text_len)

        if workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            # spawn: a clean interpreter per worker (fork after torch/tokenizers threads is unsafe).
            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                     initargs=(tokenizer.spec(),)) as pool:
                pending: deque = deque()
                for chunk in chunks:
                    pending.append((chunk_chars(chunk), pool.submit(_encode_chunk, chunk)))
                    if len(pending) >= 2 * workers:
                        n, fut = pending.popleft()
                        emit(n, fut.result())
                while pending:
                    n, fut = pending.popleft()
                    emit(n, fut.result())
        else:
            for chunk in chunks:
                emit(chunk_chars(chunk), encode_chunk(tokenizer, chunk))
    side = {"dtype": dtype.name, "tokens": count, "vocab_size": int(vocab_size), "tokenizer": tokenizer.spec()}
    side.update(meta or {})
    side_tmp = Path(f"{tmp}.json")
    side_tmp.write_text(json.dumps(side))
    os.replace(tmp, out)
    os.replace(side_tmp, Path(f"{out}.json"))
    return side


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 1) - 1))


def build_split(source: Any, split: str, tokenizer: Any, vocab_size: int, cache_dir: str | Path,
                workers: int | None = None) -> Path:
    """The cached token file of one split, tokenizing it first if needed."""
    path = cache_path(cache_dir, source.identity(split), split, tokenizer.spec())
    if path.is_file() and Path(f"{path}.json").is_file():
        return path
    size = source.size_bytes(split)
    n = default_workers() if workers is None else max(1, int(workers))
    if size < PARALLEL_MIN_BYTES:
        n = 1
    write_tokens(source.chunks(split), tokenizer, path, vocab_size, workers=n, total_chars=size or None,
                 description=f"tokenizing {split}", meta={"source": source.identity(split), "split": split})
    return path


# -- hub recipes: one shard folder per (dataset, tokenizer) ----------------------------------------
def shard_dir_path(cache_dir: str | Path, source: Any, splits: list[str], spec: dict[str, Any]) -> Path:
    """The cache's shard folder of a hub dataset: keyed like the token files (every split's source
    identity, so dataset, configuration, data files, field, separator and documents; the tokenizer)."""
    key = digest({"source": {s: source.identity(s) for s in splits}, "tokenizer": tokenizer_key(spec)})
    return Path(cache_dir) / f"hub-{spec['kind']}-{key}"


def build_shard_dir(source: Any, splits: list[str], tokenizer: Any, vocab_size: int, cache_dir: str | Path,
                    workers: int | None = None) -> Path:
    """The hub dataset's shard folder in the cache, tokenizing it first if needed.

    The layout of ``prepare tokenize ... out=DIR`` (``<split>_000000.bin`` with its sidecar per
    split, ``meta.json``; ``tokenizer.json`` for the Hugging Face kinds), so training reads it as
    ``data=tokens data.path=DIR`` does. It is written in a temporary folder beside it and renamed
    into place when complete: a folder under the final name is always whole, and a kill leaves at
    most a temporary folder that no run reads.
    """
    import shutil

    from lm_lightning.data.shards import FORMAT, shard_name

    spec = tokenizer.spec()
    final = shard_dir_path(cache_dir, source, splits, spec)
    if (final / "meta.json").is_file():
        return final
    for stale in final.parent.glob(f".{final.name}.*.tmp"):  # a killed run's: its process is gone
        if not _alive(stale.name.rsplit(".", 2)[-2]):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        names, tokens = {}, {}
        for split in splits:
            size = source.size_bytes(split)
            n = default_workers() if workers is None else max(1, int(workers))
            name = shard_name(split, 0)
            side = write_tokens(source.chunks(split), tokenizer, tmp / name, vocab_size,
                                workers=n if size >= PARALLEL_MIN_BYTES else 1, total_chars=size or None,
                                description=f"tokenizing {split}",
                                meta={"source": source.identity(split), "split": split})
            names[split], tokens[split] = [name], side["tokens"]
        if hasattr(tokenizer, "to_json"):
            (tmp / "tokenizer.json").write_text(tokenizer.to_json(), encoding="utf-8")
        meta = {"format": FORMAT, "inputs": [source.describe()], "source": {s: source.identity(s) for s in splits},
                "tokenizer": spec, "tokenizer_key": tokenizer_key(spec), "vocab_size": int(vocab_size),
                "eot_id": getattr(tokenizer, "eot_id", None), "dtype": dtype_for_vocab(vocab_size).name,
                "tokens": tokens, "shards": names}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if final.is_dir() and not (final / "meta.json").is_file():
            shutil.rmtree(final, ignore_errors=True)  # not ours: a complete folder always has meta.json
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished the same folder first: use theirs
            if not (final / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _alive(pid: str) -> bool:
    """Whether process ``pid`` (a temporary folder's suffix) still runs."""
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # another user's process
        return True
    return True
