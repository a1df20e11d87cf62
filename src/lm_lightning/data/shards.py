"""Tokenize a corpus into a directory of token shards: parallel, resumable, byte-identical.

Layout of ``DIR``::

    val_000000.bin    the first ``val_tokens`` worth of documents (ends at a document end)
    train_000000.bin  then ``shard_tokens`` tokens per shard (the last one may be shorter)
    *.bin.json        a sidecar per shard: dtype, tokens, vocab_size, where it ends in the input
    plan.json         what is being tokenized (inputs, options, tokenizer): a rerun must match it
    tokenizer.json    the tokenizer (Hugging Face kinds), so that DIR is self-contained
    meta.json         written last: tokenizer, vocabulary, dtype, counts, inputs, shard names

The token stream is every document's ids followed by the tokenizer's end-of-text id. The
reader groups the documents into batches (at most ``BATCH_DOCS`` documents or ``BATCH_CHARS``
characters) in input order; batches are encoded in this process (``workers=1``) or in worker
processes, and written in order. Batching does not depend on the worker count, so neither
does the output.

A shard is written to ``NAME.tmp`` and renamed when complete, then its sidecar is renamed
into place; a shard counts as finished only when both exist. A sidecar records where its
shard ends: batch ``b`` of the input, after ``o`` of that batch's tokens. A rerun keeps the
finished shards, skips the batches before ``b`` without encoding them, drops the first ``o``
tokens of batch ``b`` and goes on: the result is byte-identical to an uninterrupted run.

(Longer than most modules on purpose: the writer, what counts as finished, the resume cursor
and the final ``meta.json`` are one protocol, and reading them apart would hide it.)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lm_lightning.atomic import fsync_replace
from lm_lightning.errors import UserError

BATCH_DOCS = 1000
BATCH_CHARS = 2 << 20
FORMAT = "lm_lightning.shards/1"
# Test hook: exit abruptly (as kill -9 would) at the first write after this many shards were finished.
EXIT_AFTER_ENV = "LM_LIGHTNING_PREPARE_EXIT_AFTER"


def batches(documents: Iterator[tuple[str, bool]], max_docs: int | None = None,
            max_chars: int | None = None) -> Iterator[tuple[list[str], list[bool]]]:
    """Documents grouped into encode batches; empty documents are dropped (no lone EOT)."""
    max_docs, max_chars = max_docs or BATCH_DOCS, max_chars or BATCH_CHARS
    texts: list[str] = []
    ends: list[bool] = []
    chars = 0
    open_doc = False  # a piece of the current document was emitted already
    for text, end in documents:
        if not text and not open_doc:
            continue
        texts.append(text)
        ends.append(end)
        open_doc = not end
        chars += len(text)
        if len(texts) >= max_docs or chars >= max_chars:
            yield texts, ends
            texts, ends, chars = [], [], 0
    if texts:
        yield texts, ends


def encode(tok: Any, texts: list[str], ends: list[bool], eot: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The batch's ids (EOT after each document end) and the cumulative token count at each document end."""
    fast = getattr(getattr(tok, "tok", None), "encode_batch_fast", None)
    if fast is not None:  # tokenizers >= 0.21: the same ids without computing offsets
        lists = [e.ids for e in fast(texts, add_special_tokens=tok.kind != "hf")]
    elif (batch := getattr(tok, "encode_batch", None)) is not None:
        lists = batch(texts)
    else:
        lists = [tok.encode_array(t) for t in texts]
    lens = np.fromiter((len(ids) for ids in lists), dtype=np.int64, count=len(lists))
    endv = np.asarray(ends, dtype=np.int64)
    sizes = lens + endv
    total = int(sizes.sum())
    out = np.empty(total, dtype=np.int64)
    pos = 0
    for ids, n, e in zip(lists, lens.tolist(), ends):
        out[pos:pos + n] = ids
        pos += n
        if e:
            out[pos] = eot
            pos += 1
    if total:
        top = int(out.max())
        if top > np.iinfo(dtype).max:
            raise UserError(f"token id {top} does not fit {dtype.name}; use dtype=uint32")
    return out.astype(dtype), np.cumsum(sizes)[endv.astype(bool)]


_worker: dict[str, Any] = {}


def _init_worker(spec: dict[str, Any], eot: int, dtype: str, threads: int, parent: int) -> None:
    import threading

    # The Rust tokenizer's own thread pool: the cores shared among the workers, not each taking all.
    os.environ["RAYON_NUM_THREADS"] = str(threads)
    from lm_lightning.data.tokenizers import from_spec

    # ``parent`` is the main process's pid as it gave it: read here with os.getppid(), a main
    # process that died while this worker was still starting would already be gone, and the
    # worker would watch its new parent and linger forever (holding the caller's pipes open).
    def watch() -> None:  # the main process was killed (kill -9): do not linger as an orphan
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    _worker.update(tok=from_spec(spec), eot=eot, dtype=np.dtype(dtype))


def _encode_in_worker(item: tuple[list[str], list[bool]]) -> tuple[np.ndarray, np.ndarray]:
    return encode(_worker["tok"], item[0], item[1], _worker["eot"], _worker["dtype"])


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    fsync_replace(tmp, path)


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:06d}.bin"


class ShardWriter:
    """One split's shards: appends ids, cuts every ``shard_tokens``, finishes shards atomically."""

    def __init__(self, out: Path, split: str, shard_tokens: int, dtype: np.dtype, vocab_size: int,
                 index: int = 0, on_finish: Any = None) -> None:
        self.out, self.split, self.shard_tokens, self.dtype = out, split, shard_tokens, dtype
        self.vocab_size, self.index, self.on_finish = vocab_size, index, on_finish
        self.fh = None
        self.n = 0  # tokens in the open shard

    def _open(self) -> None:
        if self.fh is None:
            self.fh = open(self.out / (shard_name(self.split, self.index) + ".tmp"), "wb")
            self.n = 0

    def write(self, ids: np.ndarray, cursor: tuple[int, int]) -> None:
        """Append ``ids``, the tokens of batch ``cursor[0]`` from offset ``cursor[1]`` on."""
        b, off = cursor
        pos = 0
        while pos < len(ids):
            self._open()
            take = min(len(ids) - pos, self.shard_tokens - self.n)
            self.fh.write(ids[pos:pos + take].tobytes())
            if self.n == 0:
                _maybe_exit(self.fh)  # the test hook: dies with this shard half-written
            self.n += take
            pos += take
            if self.n == self.shard_tokens:
                self.finish((b, off + pos), last=False)

    def finish(self, cursor: tuple[int, int], last: bool) -> None:
        if self.fh is None:
            if not last:
                return
            self._open()  # an empty split still has a (final) shard only when nothing was written
        name = shard_name(self.split, self.index)
        self.fh.close()
        self.fh = None
        final = self.out / name
        fsync_replace(self.out / (name + ".tmp"), final)
        _write_json(self.out / (name + ".json"), {
            "dtype": self.dtype.name, "tokens": self.n, "vocab_size": self.vocab_size,
            "end": {"batch": cursor[0], "offset": cursor[1]}, "last": last})
        if self.on_finish is not None:
            self.on_finish()
        self.index += 1

    def close_open(self, cursor: tuple[int, int]) -> None:
        """The end of the input: the open shard (if any) is the split's last."""
        if self.fh is not None:
            self.finish(cursor, last=True)
        elif self.index > 0:  # the stream ended exactly at a shard boundary: mark that one last
            side = self.out / (shard_name(self.split, self.index - 1) + ".json")
            meta = json.loads(side.read_text())
            meta["last"] = True
            _write_json(side, meta)


_finished_here = 0


def _count_finished() -> None:
    global _finished_here
    _finished_here += 1


def _maybe_exit(fh: Any) -> None:
    limit = os.environ.get(EXIT_AFTER_ENV)
    if limit is not None and _finished_here >= int(limit):
        fh.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(9)


def finished_shards(out: Path, split: str) -> list[dict[str, Any]]:
    """The consecutive finished shards of a split (shard and sidecar both present, sizes agree)."""
    done = []
    i = 0
    while True:
        bin_, side = out / shard_name(split, i), out / (shard_name(split, i) + ".json")
        if not (bin_.is_file() and side.is_file()):
            break
        try:
            meta = json.loads(side.read_text())
        except ValueError:
            break
        if bin_.stat().st_size != meta["tokens"] * np.dtype(meta["dtype"]).itemsize:
            break
        done.append(meta)
        i += 1
    return done


def _remove_from(out: Path, split: str, first: int) -> None:
    """Every file of shards ``first`` and later of a split, and every temporary file."""
    for p in out.glob(f"{split}_*"):
        stem = p.name.split(".", 1)[0]
        try:
            idx = int(stem.split("_", 1)[1])
        except ValueError:
            continue
        if idx >= first or p.name.endswith(".tmp"):
            p.unlink(missing_ok=True)


class Progress:
    """A rich progress line (tokens and tokens/s) on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool, description: str) -> None:
        self.enabled, self.description, self.tokens, self.t0 = enabled, description, 0, time.perf_counter()
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import Progress as RichProgress
            from rich.progress import SpinnerColumn, TextColumn, TimeElapsedColumn

            self.bar = RichProgress(SpinnerColumn(), TextColumn("{task.description}"),
                                    TextColumn("{task.completed:,.0f} tokens"), TextColumn("{task.fields[rate]}"),
                                    TimeElapsedColumn(), console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(description, total=None, rate="")

    def advance(self, n: int) -> None:
        self.tokens += n
        if self.bar is not None:
            rate = self.tokens / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, completed=self.tokens, rate=f"{rate:,.0f} tokens/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def write_shards(corpus: Any, tok: Any, out: Path, plan: dict[str, Any], workers: int = 1,
                 progress: bool | None = None) -> dict[str, Any]:
    """Tokenize ``corpus`` into ``out`` (see the module docstring); returns the run's counts."""
    dtype, eot = np.dtype(plan["dtype"]), int(plan["eot_id"])
    shard_tokens, val_tokens, vocab = int(plan["shard_tokens"]), int(plan["val_tokens"]), int(plan["vocab_size"])
    val_done = finished_shards(out, "val")
    val_complete = val_tokens == 0 or (bool(val_done) and val_done[-1]["last"])
    train_done = finished_shards(out, "train") if val_complete else []
    _remove_from(out, "val", len(val_done))
    _remove_from(out, "train", len(train_done))
    if val_tokens == 0:
        _remove_from(out, "val", 0)
    # Validation is one shard (val_000000.bin) whatever its size.
    val = ShardWriter(out, "val", 1 << 62, dtype, vocab, index=len(val_done), on_finish=_count_finished)
    train = ShardWriter(out, "train", shard_tokens, dtype, vocab, index=len(train_done), on_finish=_count_finished)
    resume = train_done[-1] if train_done else (val_done[-1] if val_complete and val_done else None)
    start_b, start_off = (resume["end"]["batch"], resume["end"]["offset"]) if resume else (0, 0)
    val_count = sum(m["tokens"] for m in val_done)
    in_val = not val_complete
    skipped_tokens = sum(m["tokens"] for m in val_done + train_done)
    show = sys.stderr.isatty() if progress is None else progress
    bar = Progress(show, f"tokenizing into {out}")
    t0 = time.perf_counter()
    counted = 0
    last_cursor = (start_b, start_off)

    def emit(b: int, ids: np.ndarray, doc_ends: np.ndarray) -> None:
        nonlocal in_val, val_count, counted, last_cursor
        off = first = start_off if b == start_b else 0
        if in_val:
            # Documents go to validation until it holds val_tokens; it ends at a document end.
            ends = doc_ends[doc_ends > off]
            k = int(np.searchsorted(ends - off, val_tokens - val_count, side="left"))
            cut = int(ends[k]) if k < len(ends) else len(ids)
            val.write(ids[off:cut], (b, off))
            val_count += cut - off
            if k < len(ends):
                val.finish((b, cut), last=True)
                in_val = False
            off = cut
        if not in_val:
            train.write(ids[off:], (b, off))
        counted += len(ids) - first
        bar.advance(len(ids) - first)
        last_cursor = (b, len(ids))

    def todo() -> Iterator[tuple[int, tuple[list[str], list[bool]]]]:
        # The batching of the plan (a rerun must cut the same batches as the run it completes).
        for b, item in enumerate(batches(corpus.documents(), plan.get("batch_docs"), plan.get("batch_chars"))):
            if b >= start_b:
                yield b, item

    try:
        if workers > 1:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                     initargs=(tok.spec(), eot, dtype.name,
                                               max(1, (os.cpu_count() or 1) // workers), os.getpid())) as pool:
                pending: deque = deque()
                for b, item in todo():
                    pending.append((b, pool.submit(_encode_in_worker, item)))
                    if len(pending) >= 2 * workers + 1:
                        b0, fut = pending.popleft()
                        emit(b0, *fut.result())
                while pending:
                    b0, fut = pending.popleft()
                    emit(b0, *fut.result())
        else:
            for b, (texts, ends) in todo():
                emit(b, *encode(tok, texts, ends, eot, dtype))
        if in_val:
            val.close_open(last_cursor)
        train.close_open(last_cursor)
    finally:
        bar.close()
        for w in (val, train):
            if w.fh is not None:
                w.fh.close()
    seconds = time.perf_counter() - t0
    return {"tokens_this_run": counted, "tokens_kept": skipped_tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(counted / max(seconds, 1e-9)), "resumed_at_batch": start_b}


def finalize(out: Path, plan: dict[str, Any]) -> dict[str, Any]:
    """meta.json from the finished shards (written last: the directory is complete)."""
    splits = {s: finished_shards(out, s) for s in ("val", "train")}
    if not splits["train"] or not splits["train"][-1]["last"]:
        raise UserError(f"{out}: the training shards are incomplete")
    meta = {k: v for k, v in plan.items() if k != "identity"}
    meta.update({
        "format": FORMAT,
        "tokens": {s: sum(m["tokens"] for m in done) for s, done in splits.items()},
        "shards": {s: [shard_name(s, i) for i in range(len(done))] for s, done in splits.items()},
    })
    _write_json(out / "meta.json", meta)
    return meta


def remove_outputs(out: Path, created: bool) -> None:
    """After a user error: no shard left behind (the whole folder when this run made it)."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for split in ("val", "train"):
        _remove_from(out, split, 0)
    for name in ("plan.json", "meta.json", "tokenizer.json"):
        (out / name).unlink(missing_ok=True)
