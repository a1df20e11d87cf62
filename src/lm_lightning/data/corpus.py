"""The inputs of ``prepare tokenize``: documents from text, JSONL, parquet or a Hugging Face dataset.

A corpus is an ordered list of inputs; each yields its documents in order:

- ``.txt``: the whole file is one document (read in blocks and cut after a newline followed by
  a non-space character, so a large file never sits in memory);
- ``.jsonl`` / ``.jsonl.gz``: one JSON object per line, the document is its ``text_field``;
- ``.parquet``: one row per document (column ``text_field``), streamed a record batch at a time
  through pyarrow, so memory stays flat whatever the file size;
- ``hf:NAME[:CONFIG][/SPLIT]``: a Hugging Face dataset from the local cache (or a folder written
  by ``Dataset.save_to_disk``); one row per document. SPLIT defaults to ``train``.

Globs are expanded and sorted. :meth:`Corpus.check` finds what can be found cheaply (missing
files, an unknown kind, a missing field in the first record or the parquet schema) before any
tokenizing starts; errors further in (a bad JSON line) are reported with the file and line.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lm_lightning.data.documents import last_cut
from lm_lightning.errors import UserError

BLOCK_CHARS = 1 << 20
SPLIT_NAMES = ("train", "validation", "valid", "val", "test", "dev")
KIND_BY_SUFFIX = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".json": "jsonl", ".jsonl.gz": "jsonl",
                  ".json.gz": "jsonl", ".parquet": "parquet"}


def input_kind(path: str) -> str | None:
    name = path.lower()
    for suffix in sorted(KIND_BY_SUFFIX, key=len, reverse=True):
        if name.endswith(suffix):
            return KIND_BY_SUFFIX[suffix]
    return None


@dataclass(frozen=True)
class Input:
    kind: str  # txt | jsonl | parquet | hf
    path: str  # a file, or for hf the dataset name or a save_to_disk folder
    config: str | None = None
    split: str = "train"

    def identity(self) -> list[Any]:
        if self.kind == "hf":
            return ["hf", self.path, self.config, self.split]
        st = os.stat(self.path)
        return [self.kind, str(Path(self.path).resolve()), st.st_size, int(st.st_mtime)]

    def label(self) -> str:
        if self.kind != "hf":
            return self.path
        return f"hf:{self.path}" + (f":{self.config}" if self.config else "") + f"/{self.split}"


def parse_hf(spec: str) -> Input:
    """``hf:NAME[:CONFIG][/SPLIT]``; NAME may be ``owner/name`` or a local save_to_disk folder."""
    rest = spec[3:]
    if not rest:
        raise UserError("hf: input needs a dataset name: hf:NAME[:CONFIG][/SPLIT]")
    if os.path.isdir(rest):
        return Input("hf", rest)
    name, config, split = rest, None, "train"
    if ":" in rest:
        name, tail = rest.split(":", 1)
        config, _, s = tail.partition("/")
        split = s or split
        config = config or None
    else:
        head, _, last = rest.rpartition("/")
        if head and not os.path.isdir(rest) and (last in SPLIT_NAMES or "[" in last or rest.count("/") >= 2):
            name, split = head, last
    return Input("hf", name, config, split)


def expand_inputs(patterns: list[str]) -> list[Input]:
    """Inputs from paths, globs and ``hf:`` specs, in the order given (each glob sorted)."""
    if not patterns:
        raise UserError("prepare tokenize needs at least one input (a file, a glob or hf:NAME)")
    out: list[Input] = []
    for pat in patterns:
        if pat.startswith("hf:"):
            out.append(parse_hf(pat))
            continue
        pat = os.path.expanduser(pat)
        matches = sorted(glob.glob(pat)) if glob.has_magic(pat) else [pat]
        matches = [m for m in matches if not os.path.isdir(m)] if glob.has_magic(pat) else matches
        if not matches:
            raise UserError(f"no file matches {pat}")
        for m in matches:
            if not os.path.isfile(m):
                raise UserError(f"input not found: {m}")
            kind = input_kind(m)
            if kind is None:
                raise UserError(f"{m}: unknown input kind; expected .txt, .jsonl, .jsonl.gz, .parquet or hf:NAME")
            if not os.access(m, os.R_OK):
                raise UserError(f"{m}: not readable (permission denied)")
            out.append(Input(kind, m))
    return out


def _open_text(path: str):
    if path.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


class Corpus:
    """Documents from a list of inputs, as ``(text, ends_document)`` pieces in a fixed order."""

    def __init__(self, inputs: list[Input], text_field: str = "text") -> None:
        self.inputs, self.text_field = inputs, text_field
        self._hf: dict[Input, Any] = {}

    # -- checks before any work -------------------------------------------------------------
    def check(self) -> None:
        for inp in self.inputs:
            if inp.kind == "jsonl":
                self._check_jsonl(inp.path)
            elif inp.kind == "parquet":
                names = self._parquet(inp.path).schema_arrow.names
                if self.text_field not in names:
                    raise UserError(f"{inp.path}: no column {self.text_field!r} (columns: {names}); set text_field=")
            elif inp.kind == "hf":
                ds = self._dataset(inp)
                if self.text_field not in ds.column_names:
                    raise UserError(f"{inp.label()}: no column {self.text_field!r} (columns: {ds.column_names}); "
                                    f"set text_field=")
            else:
                try:
                    with open(inp.path, encoding="utf-8") as fh:
                        fh.read(BLOCK_CHARS)
                except UnicodeDecodeError as exc:
                    raise UserError(f"{inp.path} is not UTF-8 text ({exc.reason})") from exc
                except OSError as exc:
                    raise UserError(f"{inp.path}: cannot read ({exc.strerror})") from exc

    def _check_jsonl(self, path: str) -> None:
        try:
            with _open_text(path) as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        self._field(json.loads(line), path, n)
                        return
        except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
            raise UserError(f"{path}: cannot read as JSON lines ({type(exc).__name__}: {exc})") from exc

    def _field(self, obj: Any, path: str, line: int) -> str:
        if not isinstance(obj, dict) or self.text_field not in obj:
            keys = list(obj) if isinstance(obj, dict) else type(obj).__name__
            raise UserError(f"{path}:{line}: no field {self.text_field!r} (found {keys}); set text_field=")
        text = obj[self.text_field]
        if not isinstance(text, str):
            raise UserError(f"{path}:{line}: field {self.text_field!r} is {type(text).__name__}, not text")
        return text

    def size_bytes(self) -> int:
        return sum(os.path.getsize(i.path) for i in self.inputs if i.kind != "hf")

    # -- readers ----------------------------------------------------------------------------
    def _parquet(self, path: str):
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise UserError("parquet inputs need pyarrow: pip install 'lm_lightning[corpus]'") from exc
        try:
            return pq.ParquetFile(path)
        except Exception as exc:
            raise UserError(f"{path}: cannot read as parquet ({type(exc).__name__}: {exc})") from exc

    def _dataset(self, inp: Input):
        if inp in self._hf:
            return self._hf[inp]
        import datasets

        if os.path.isdir(inp.path):
            try:
                ds = datasets.load_from_disk(inp.path)
            except Exception as exc:
                raise UserError(f"{inp.path}: not a saved Hugging Face dataset ({type(exc).__name__})") from exc
            if isinstance(ds, datasets.DatasetDict):
                if inp.split not in ds:
                    raise UserError(f"{inp.label()}: no split {inp.split!r} (splits: {list(ds)})")
                ds = ds[inp.split]
        else:
            from lm_lightning.data.hub import ensure_mode

            ensure_mode()
            try:
                ds = datasets.load_dataset(inp.path, inp.config, split=inp.split)
            except Exception as exc:
                cache = os.environ.get("HF_DATASETS_CACHE") or os.path.join(
                    os.environ.get("HF_HOME", "~/.cache/huggingface"), "datasets")
                raise UserError(f"{inp.label()} could not be loaded from the Hugging Face hub or the datasets cache "
                                f"(HF_DATASETS_CACHE={cache}; HF_HOME sets its parent); offline, give local files "
                                f"instead (.jsonl, .parquet, .txt) or a save_to_disk folder") from exc
        self._hf[inp] = ds
        return ds

    def documents(self) -> Iterator[tuple[str, bool]]:
        """``(text, ends_document)``: whole documents, or pieces of a large text file."""
        for inp in self.inputs:
            if inp.kind == "txt":
                yield from self._txt(inp.path)
            elif inp.kind == "jsonl":
                yield from self._jsonl(inp.path)
            elif inp.kind == "parquet":
                yield from self._parquet_rows(inp.path)
            else:
                yield from self._hf_rows(inp)

    def _txt(self, path: str) -> Iterator[tuple[str, bool]]:
        buf = ""
        try:
            with open(path, encoding="utf-8") as fh:
                while block := fh.read(BLOCK_CHARS):
                    buf += block
                    cut = last_cut(buf)
                    if cut > 0:
                        yield buf[:cut], False
                        buf = buf[cut:]
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not UTF-8 text ({exc.reason})") from exc
        yield buf, True

    def _jsonl(self, path: str) -> Iterator[tuple[str, bool]]:
        loads, field = json.loads, self.text_field
        n = 0
        try:
            with _open_text(path) as fh:
                for n, line in enumerate(fh, 1):
                    try:
                        text = loads(line)[field]
                    except (ValueError, KeyError, TypeError):
                        if not line.strip():
                            continue
                        try:
                            obj = loads(line)
                        except ValueError as exc:
                            raise UserError(f"{path}:{n}: not valid JSON ({exc})") from exc
                        text = self._field(obj, path, n)
                    if not isinstance(text, str):
                        self._field({field: text}, path, n)
                    yield text, True
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: cannot read past line {n} ({type(exc).__name__}: {exc})") from exc

    def _parquet_rows(self, path: str) -> Iterator[tuple[str, bool]]:
        pf = self._parquet(path)
        for batch in pf.iter_batches(batch_size=1024, columns=[self.text_field]):
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield text, True

    def _hf_rows(self, inp: Input) -> Iterator[tuple[str, bool]]:
        ds = self._dataset(inp)
        for i in range(0, len(ds), 1000):
            for text in ds[i:i + 1000][self.text_field]:
                if text is not None:
                    yield text, True
