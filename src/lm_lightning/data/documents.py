"""Document boundaries: the end-of-text token between documents, and where documents start.

With document boundaries on, a text source yields a split as *document chunks*: lists of
strings ``[s0, s1, ..., sk]`` whose tokens are ``enc(s0) EOT enc(s1) EOT ... enc(sk)``, EOT
being the tokenizer's end-of-text id. A chunk may end inside a document (its last string
continues in the next chunk) or right after one (its last string is then empty). With them
off, sources yield plain strings exactly as before: token files, vocabularies and cache keys
do not change.

What a document is:

- local text (``data=text``): each file; with ``data.doc_separator``, also each piece of a
  file between two occurrences of the separator (the separator itself is dropped);
- a hub dataset (``data.documents``): ``rows``, every row (TinyStories' stories; the rows'
  ``separator`` is then not inserted, the EOT takes its place); ``wikitext``, an article: from
  a heading row `` = Title = `` (one ``=`` each side; `` = = Section = = `` rows do not start
  one) up to the next.

A document that is empty or only whitespace is none of its own: its text joins the next
document (the previous one at the end of a split). So a split never starts or ends with an
EOT, never has two in a row, and its text is kept, less the separators.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lm_lightning.data.tokenizers import EOT_TEXT
from lm_lightning.errors import UserError

DOCUMENT_KINDS = ("rows", "wikitext")
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


class _Boundary:
    """The end of one document and the start of the next, in a stream of text pieces."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "BOUNDARY"


BOUNDARY = _Boundary()


# -- settings -----------------------------------------------------------------------------------
def boundary_flag(value: Any) -> bool | str:
    """``data.doc_boundaries``: true, false or "auto" (on where the source has documents)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("auto", "true", "false"):
        return {"auto": "auto", "true": True, "false": False}[value.lower()]
    raise UserError(f"data.doc_boundaries must be true, false or auto, got {value!r}")


def separator(value: Any) -> str | None:
    r"""``data.doc_separator`` with ``\n``, ``\t``, ``\r`` and ``\\`` decoded (command lines keep them literal)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UserError(f"data.doc_separator must be a non-empty string (or null), got {value!r}")
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], value)


def documents_kind(value: Any) -> str | None:
    if value is None or value in DOCUMENT_KINDS:
        return value
    raise UserError(f"data.documents must be one of {list(DOCUMENT_KINDS)} (or null), got {value!r}")


def check_doc_options(source: str, documents: Any, doc_separator: Any) -> None:
    """Each source kind's own way to say what a document is; the other one is a mistake."""
    if source == "text" and documents is not None:
        raise UserError("data.documents is for Hugging Face datasets; in local text each file is a document "
                        "(data.doc_separator cuts files further)")
    if source == "hf" and doc_separator is not None:
        raise UserError("data.doc_separator is for local text (data=text); hub datasets use data.documents")


def check_bos_aligned(value: Any, source: Any) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"data.bos_aligned must be true or false, got {value!r}")
    if value and source is not None and not source.doc_boundaries:
        raise UserError("data.bos_aligned=true needs document boundaries and this source has none "
                        "(data.doc_boundaries=true; for data=text several files or data.doc_separator)")
    return value


# -- text pieces to document chunks -----------------------------------------------------------
def last_cut(text: str) -> int:
    """Where to cut ``text``: after its last newline that is followed by a non-space (-1: nowhere)."""
    end = len(text)
    while True:
        i = text.rfind("\n", 0, end)
        if i <= 0:
            return -1
        if i + 1 < len(text) and not text[i + 1].isspace():
            return i + 1
        end = i


def normalise(events: Iterable[Any]) -> Iterator[Any]:
    """Boundaries only between documents that have more than whitespace (see the module docstring)."""
    pending = content = False  # a boundary is due before the next text; this document has text
    held: list[str] = []  # whitespace after a due boundary: the next document's, or the last one's
    for e in events:
        if e is BOUNDARY:
            if content:
                pending, content = True, False
            continue
        if not e:
            continue
        if pending:
            if e.isspace():
                held.append(e)
                continue
            yield BOUNDARY
            yield from held
            held, pending = [], False
        content = content or not e.isspace()
        yield e
    yield from held


def doc_chunks(events: Iterable[Any], size: int) -> Iterator[list[str]]:
    """Group text pieces and boundaries into document chunks of about ``size`` characters.

    A chunk ends at a document boundary when it has one, else after a newline followed by a
    non-space character (as plain chunks do), else it keeps growing.
    """
    segs: list[str] = []
    cur: list[str] = []
    n = 0
    for e in normalise(events):
        if e is BOUNDARY:
            segs.append("".join(cur))
            cur = []
            continue
        cur.append(e)
        n += len(e)
        if n < size:
            continue
        text = "".join(cur)
        if segs:
            yield segs + [""]
            segs, cur, n = [], [text], len(text)
        elif (cut := last_cut(text)) > 0:
            yield [text[:cut]]
            cur, n = [text[cut:]], len(text) - cut
        else:
            cur = [text]
    if segs or cur:
        yield segs + ["".join(cur)]


def strings(chunks: Iterable[Any]) -> Iterator[str]:
    """The text of plain or document chunks, without boundaries (for vocabularies and BPE training)."""
    for c in chunks:
        if isinstance(c, str):
            yield c
        else:
            yield from (s for s in c if s)


def chunk_chars(chunk: Any) -> int:
    return len(chunk) if isinstance(chunk, str) else sum(len(s) for s in chunk)


def no_eot_message(tokenizer: Any) -> str:
    return (f"the {getattr(tokenizer, 'kind', '?')} tokenizer has no end-of-text token ({EOT_TEXT}), which "
            f"document boundaries need; use a tokenizer that has one, or data.doc_boundaries=false")


def encode_chunk(tokenizer: Any, chunk: Any) -> np.ndarray:
    """Token ids of a plain chunk, or of a document chunk with EOT between its strings."""
    if isinstance(chunk, str):
        return tokenizer.encode_array(chunk)
    eot = getattr(tokenizer, "eot_id", None)
    if eot is None:
        raise UserError(no_eot_message(tokenizer))
    batch = getattr(tokenizer, "encode_batch", None)
    parts = ([np.asarray(ids, dtype=np.int64) for ids in batch(chunk)] if batch is not None
             else [tokenizer.encode_array(s) for s in chunk])
    sep = np.array([eot], dtype=np.int64)
    out = [parts[0]]
    for p in parts[1:]:
        out += [sep, p]
    return np.concatenate(out)


# -- what a document is -------------------------------------------------------------------------
def split_on(pieces: Iterable[str], sep: str) -> Iterator[Any]:
    """Text pieces with each occurrence of ``sep`` (also one across pieces) replaced by a boundary."""
    keep = len(sep) - 1
    buf = ""
    for piece in pieces:
        parts = (buf + piece).split(sep)
        for p in parts[:-1]:
            yield p
            yield BOUNDARY
        buf = parts[-1]
        if len(buf) > keep:  # the last keep characters may start a separator that the next piece ends
            cut = len(buf) - keep
            yield buf[:cut]
            buf = buf[cut:]
    if buf:
        yield buf


def file_events(files: list[Path], sep: str | None, blocks: Any) -> Iterator[Any]:
    """Each file a document (cut further at ``sep``); ``blocks(file)`` yields its text."""
    for f in files:
        yield BOUNDARY
        yield from (split_on(blocks(f), sep) if sep else blocks(f))


def fraction_events(texts: list[str], lo: int, hi: int, sep: str | None, block: int) -> Iterator[Any]:
    """The documents of ``"".join(texts)`` clipped to characters [lo, hi) (the fraction split)."""
    pos = 0
    for text in texts:
        docs = text.split(sep) if sep else [text]
        for k, d in enumerate(docs):
            a, b = max(pos, lo), min(pos + len(d), hi)
            if a < b:
                yield BOUNDARY
                piece = d[a - pos:b - pos]
                for i in range(0, len(piece), block):
                    yield piece[i:i + block]
            pos += len(d) + (len(sep) if sep and k < len(docs) - 1 else 0)


_HEADING = re.compile(r" = (?!= ).+ = ")


def is_article_heading(row: str) -> bool:
    """A WikiText article title row, `` = Title = ``; `` = = Section = = `` is not one."""
    return _HEADING.fullmatch(row.rstrip("\n")) is not None


def row_events(ds: Any, field: str, kind: str, sep: str, batch: int = 1000) -> Iterator[Any]:
    """A hub dataset's rows as documents: every row (``rows``) or WikiText articles (``wikitext``)."""
    first = True
    for i in range(0, len(ds), batch):
        for row in ds[i:i + batch][field]:
            if kind == "rows" or is_article_heading(row):
                yield BOUNDARY
            elif sep and not first:
                yield sep
            first = False
            yield row


# -- where documents start in a token file ------------------------------------------------------
def doc_starts(tokens: Any, eot_id: int, block: int = 1 << 22) -> np.ndarray:
    """Positions of the first token of each document: 0 and every position after an EOT."""
    n = len(tokens)
    found = [np.zeros(1, dtype=np.int64)]
    for s in range(0, n, block):
        found.append(np.flatnonzero(tokens.read(s, min(block, n - s)) == eot_id) + (s + 1))
    starts = np.concatenate(found)
    return starts[starts < n]


def training_doc_starts(tokenizer: Any, tokens: Any) -> np.ndarray:
    """Document starts of the training split for ``data.bos_aligned``; one document is a user error."""
    eot = getattr(tokenizer, "eot_id", None) if tokenizer is not None else None
    if eot is None:
        raise UserError("data.bos_aligned=true needs the tokenizer's end-of-text id to find document starts, "
                        "and this data has no tokenizer with one (tokenizer=..., or data.bos_aligned=false)")
    starts = doc_starts(tokens, eot)
    if len(starts) < 2:
        raise UserError(f"data.bos_aligned=true: the training split has no end-of-text token (id {eot}), so "
                        f"it is one document; set data.bos_aligned=false")
    return starts
