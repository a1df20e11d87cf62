"""Where text comes from: local files or a Hugging Face dataset, one split at a time.

A source yields a split as text chunks of about ``CHUNK_CHARS`` characters, cut at line
boundaries, so that a multi-GB corpus is never held in memory and chunks can be tokenized in
parallel. ``identity()`` is what the token cache is keyed on: paths with their size and
modification time, or the hub dataset's name and configuration (and, with document
boundaries on, what a document is: see :mod:`lm_lightning.data.documents`).

Just over 300 lines because every source kind (files and globs, JSONL, parquet, hub datasets and
saved ``datasets`` folders) keeps its reader and its identity side by side.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lm_lightning.data import documents as docs
from lm_lightning.data.documents import last_cut as _last_cut
from lm_lightning.data.splits import resolve_split
from lm_lightning.errors import UserError

CHUNK_CHARS = 1 << 20


def local_hint() -> str:
    return "offline, use local files instead: data=text data.train_path=FILE [data.val_path=FILE]"


def expand(pattern: str | list[str] | None, what: str) -> list[Path]:
    """Files named by a path, a glob or a list of them; a missing file is a user error."""
    if pattern is None:
        return []
    patterns = [pattern] if isinstance(pattern, str | os.PathLike) else list(pattern)
    files: list[Path] = []
    for pat in patterns:
        pat = os.path.expanduser(str(pat))
        matches = sorted(glob.glob(pat)) if glob.has_magic(pat) else ([pat] if os.path.exists(pat) else [])
        if not matches:
            raise UserError(f"{what}: no file matches {pat}")
        files += [Path(m) for m in matches if os.path.isfile(m)]
    if not files:
        raise UserError(f"{what}: {pattern} names no regular file")
    return files


def file_identity(files: list[Path]) -> list[list[Any]]:
    out = []
    for f in files:
        st = f.stat()
        out.append([str(f.resolve()), st.st_size, int(st.st_mtime)])
    return out


def _cut_chunks(pieces: Iterator[str], size: int = CHUNK_CHARS) -> Iterator[str]:
    """Regroup text pieces into chunks of about ``size`` characters ending after a newline.

    A cut falls after a newline that is followed by a non-space character, so that runs of
    newlines (one BPE token in GPT-2) are never split between chunks.
    """
    buf: list[str] = []
    n = 0
    for piece in pieces:
        buf.append(piece)
        n += len(piece)
        if n < size:
            continue
        text = "".join(buf)
        cut = _last_cut(text)
        if cut <= 0:
            buf, n = [text], len(text)
            continue
        yield text[:cut]
        rest = text[cut:]
        buf, n = [rest], len(rest)
    tail = "".join(buf)
    if tail:
        yield tail


class TextFiles:
    """Local UTF-8 text: explicit train/val/test files (or globs), or one file split by fraction.

    Without ``val_path`` the training text is split by characters: the first ``1 - val_fraction``
    for training, the rest for validation (nanoGPT's shakespeare_char split). Without
    ``test_path`` the test split is the validation split. With ``doc_boundaries`` each file is
    a document (cut further at ``doc_separator``); "auto" turns them on when a split has
    several files or a separator is set.
    """

    kind = "text"

    def __init__(self, train_path: Any, val_path: Any = None, test_path: Any = None,
                 val_fraction: float = 0.1, doc_boundaries: bool | str = False,
                 doc_separator: str | None = None) -> None:
        if train_path is None:
            raise UserError("data.train_path is required for data=text (a file, a glob or a list)")
        self.files = {"train": expand(train_path, "data.train_path"),
                      "val": expand(val_path, "data.val_path"),
                      "test": expand(test_path, "data.test_path")}
        if not self.files["val"] and not 0.0 < float(val_fraction) < 1.0:
            raise UserError(f"data.val_fraction must be in (0, 1) when data.val_path is not set, got {val_fraction}")
        self.val_fraction = float(val_fraction)
        flag, sep = docs.boundary_flag(doc_boundaries), docs.separator(doc_separator)
        self.auto_boundaries = flag == "auto"
        if flag == "auto":
            flag = sep is not None or any(len(f) > 1 for f in self.files.values())
        self.doc_boundaries, self.doc_separator = flag, (sep if flag else None)

    def no_documents(self) -> None:
        self.doc_boundaries, self.doc_separator = False, None

    def _split_by_fraction(self) -> bool:
        return not self.files["val"]

    def identity(self, split: str) -> dict[str, Any]:
        out = self._identity(split)
        if self.doc_boundaries:
            out["docs"] = {"eot": True, "sep": self.doc_separator}
        return out

    def _identity(self, split: str) -> dict[str, Any]:
        if split == "test" and self.files["test"]:
            return {"kind": "text", "files": file_identity(self.files["test"])}
        if self._split_by_fraction():
            return {"kind": "text", "files": file_identity(self.files["train"]),
                    "part": "train" if split == "train" else "val", "val_fraction": self.val_fraction}
        return {"kind": "text", "files": file_identity(self.files[self._resolve(split)])}

    def _resolve(self, split: str) -> str:
        return resolve_split(split, lambda s: bool(self.files[s]))

    def size_bytes(self, split: str) -> int:
        if split == "test" and self.files["test"]:
            files = self.files["test"]
        else:
            files = self.files["train"] if self._split_by_fraction() else self.files[self._resolve(split)]
        return sum(f.stat().st_size for f in files)

    def _read(self, files: list[Path]) -> str:
        try:
            return "".join(f.read_text(encoding="utf-8") for f in files)
        except UnicodeDecodeError as exc:
            raise UserError(f"{files[0]} is not UTF-8 text ({exc.reason}); use tokenizer=byte or convert it") from exc

    def text(self, split: str) -> str:
        """The whole split as one string (for small corpora and character vocabularies)."""
        return "".join(docs.strings(self.chunks(split)))

    def chunks(self, split: str) -> Iterator[Any]:
        """Plain text chunks; with document boundaries, document chunks (see documents.py)."""
        if self.doc_boundaries:
            yield from self._doc_chunks(split)
            return
        if split == "test" and self.files["test"]:
            yield from self._stream(self.files["test"])
            return
        if self._split_by_fraction():
            text = self._read(self.files["train"])
            cut = int(len(text) * (1.0 - self.val_fraction))
            part = text[:cut] if split == "train" else text[cut:]
            for i in range(0, len(part), CHUNK_CHARS):
                # Character-exact slices: the fraction split must not move text between splits.
                yield part[i:i + CHUNK_CHARS]
            return
        yield from self._stream(self.files[self._resolve(split)])

    def _doc_chunks(self, split: str) -> Iterator[list[str]]:
        sep = self.doc_separator
        if split == "test" and self.files["test"]:
            events = docs.file_events(self.files["test"], sep, self._blocks)
        elif self._split_by_fraction():
            texts = [self._read([f]) for f in self.files["train"]]
            total = sum(len(t) for t in texts)
            cut = int(total * (1.0 - self.val_fraction))
            lo, hi = (0, cut) if split == "train" else (cut, total)
            events = docs.fraction_events(texts, lo, hi, sep, CHUNK_CHARS)
        else:
            events = docs.file_events(self.files[self._resolve(split)], sep, self._blocks)
        yield from docs.doc_chunks(events, CHUNK_CHARS)

    def _blocks(self, f: Path) -> Iterator[str]:
        try:
            with open(f, encoding="utf-8") as fh:
                while block := fh.read(CHUNK_CHARS):
                    yield block
        except UnicodeDecodeError as exc:
            raise UserError(f"{f} is not UTF-8 text ({exc.reason}); use tokenizer=byte or convert it") from exc

    def _stream(self, files: list[Path]) -> Iterator[str]:
        yield from _cut_chunks(block for f in files for block in self._blocks(f))


class HubDataset:
    """A Hugging Face dataset with a text column: ``datasets.load_dataset(path, name, ...)``.

    ``path`` may also be a builder such as ``text``, ``json`` or ``parquet`` with local
    ``data_files``: the same code path, without the network. Rows are joined with
    ``separator`` (WikiText's rows are lines that keep their newline, so it uses "").
    ``documents`` (rows | wikitext) says what a document is; boundaries ("auto": on when it is
    set) put the tokenizer's end-of-text token between documents.
    """

    kind = "hf"

    def __init__(self, path: str, name: str | None = None, data_files: Any = None,
                 splits: dict[str, str] | None = None, text_field: str = "text",
                 separator: str = "\n", documents: str | None = None,
                 doc_boundaries: bool | str = False) -> None:
        if not path:
            raise UserError("data.hf_path is required for a Hugging Face dataset")
        flag, kind = docs.boundary_flag(doc_boundaries), docs.documents_kind(documents)
        self.auto_boundaries = flag == "auto"
        if flag == "auto":
            flag = kind is not None
        if flag and kind is None:
            raise UserError(f"data.doc_boundaries=true needs data.documents ({' or '.join(docs.DOCUMENT_KINDS)}) "
                            f"for a Hugging Face dataset: what a document is")
        self.doc_boundaries, self.documents = flag, (kind if flag else None)
        self.path, self.name, self.text_field, self.separator = path, name, text_field, separator
        self.data_files = _plain(data_files)
        self.splits = dict(splits or {"train": "train", "val": "validation", "test": "test"})
        self._cache: dict[str, Any] = {}

    def describe(self) -> str:
        return f"dataset {self.path!r}" + (f" ({self.name})" if self.name else "")

    def identity(self, split: str) -> dict[str, Any]:
        files = None
        if self.data_files:
            flat = self.data_files.values() if isinstance(self.data_files, dict) else [self.data_files]
            paths: list[Path] = []
            for entry in flat:
                paths += expand(entry, "data.hf_data_files")
            files = file_identity(paths)
        out = {"kind": "hf", "path": self.path, "name": self.name, "files": files,
               "split": self.splits.get(split, split), "field": self.text_field, "sep": self.separator}
        if self.doc_boundaries:
            out["docs"] = {"eot": True, "documents": self.documents}
        return out

    def no_documents(self) -> None:
        self.doc_boundaries, self.documents = False, None

    def load(self, split: str):
        hub_split = self.splits.get(split)
        if hub_split is None:
            raise UserError(f"{self.describe()} has no {split} split configured (data.hf_splits)")
        if hub_split in self._cache:
            return self._cache[hub_split]
        import datasets

        from lm_lightning.data.hub import ensure_mode

        ensure_mode()
        try:
            ds = datasets.load_dataset(self.path, self.name, data_files=self.data_files, split=hub_split)
        except (ValueError, KeyError) as exc:
            if "split" in str(exc).lower() or "Unknown split" in str(exc):
                raise UserError(f"{self.describe()} has no split {hub_split!r}: {exc}") from exc
            raise UserError(self._offline_message()) from exc
        except Exception as exc:  # connection errors, missing cache, hub refusals
            raise UserError(self._offline_message()) from exc
        if self.text_field not in ds.column_names:
            raise UserError(f"{self.describe()} has no column {self.text_field!r} (columns: {ds.column_names})")
        self._cache[hub_split] = ds
        return ds

    def _offline_message(self) -> str:
        cache = os.environ.get("HF_DATASETS_CACHE") or os.path.join(
            os.environ.get("HF_HOME", "~/.cache/huggingface"), "datasets")
        return (f"{self.describe()} could not be loaded from the Hugging Face hub or the datasets cache "
                f"(HF_DATASETS_CACHE={cache}; HF_HOME sets its parent); {local_hint()}")

    def size_bytes(self, split: str) -> int:
        ds = self.load(split)
        return int(getattr(ds, "data", None).nbytes) if getattr(ds, "data", None) is not None else 0

    def chunks(self, split: str) -> Iterator[Any]:
        ds = self.load(split)
        sep = self.separator
        if self.doc_boundaries:
            yield from docs.doc_chunks(docs.row_events(ds, self.text_field, self.documents, sep), CHUNK_CHARS)
            return

        def pieces() -> Iterator[str]:
            for i in range(0, len(ds), 1000):
                rows = ds[i:i + 1000][self.text_field]
                yield sep.join(rows) + (sep if i + 1000 < len(ds) else "")
        yield from _cut_chunks(pieces())

    def text(self, split: str) -> str:
        return "".join(docs.strings(self.chunks(split)))


def _plain(value: Any) -> Any:
    """OmegaConf containers to plain ones (datasets checks isinstance(dict/list))."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(value, DictConfig | ListConfig):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return value
