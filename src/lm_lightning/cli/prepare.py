"""Data preparation, the original guides' scripts as one command.

    python -m lm_lightning.prepare analyze FILE...            counts, coverage, length histogram (JSON)
    python -m lm_lightning.prepare clean IN OUT               normalise, drop control characters
    python -m lm_lightning.prepare split IN TRAIN VAL [--val-fraction 0.1 | --val-lines N]
    python -m lm_lightning.prepare tokenize INPUT... out=DIR [tokenizer=byte|char|bpe|gpt2|hf]
                                   [tokenizer_path=FILE_OR_DIR] [vocab_size=10000] [workers=1]
                                   [shard_tokens=100M] [val_tokens=0] [text_field=text] [dtype=auto]

``tokenize`` (key=value): inputs are .txt, .jsonl, .jsonl.gz, .parquet files, globs of them and
``hf:NAME[:CONFIG][/SPLIT]``; every document is followed by the tokenizer's end-of-text id.
``out=DIR`` writes token shards (``data=tokens data.path=DIR``; see data/shards.py: parallel
over ``workers`` processes, byte-identical whatever their number, resumable after a kill);
``out=FILE.bin`` writes one file plus ``FILE.bin.json``. The older argparse spelling
``tokenize FILE... --out OUT.bin [--tokenizer ...]`` still works and still writes what it
always did (text files concatenated, no end-of-text ids).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import unicodedata
from collections import Counter
from pathlib import Path

from lm_lightning.data.prepare_tokens import parse_key_values, tokenize_corpus
from lm_lightning.errors import UserError, exit_on_user_error

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _read(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"file not found: {p}")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(f"{p} is not UTF-8 text ({exc.reason})") from exc


def analyze(paths: list[str], bins: int = 10) -> dict:
    """Character, line and word counts, vocabulary coverage and a line-length histogram."""
    chars: Counter[str] = Counter()
    words: Counter[str] = Counter()
    lengths: list[int] = []
    total_bytes = 0
    for path in paths:
        text = _read(path)
        total_bytes += Path(path).stat().st_size
        chars.update(text)
        for line in text.splitlines():
            lengths.append(len(line))
            words.update(line.split())
    n_words = sum(words.values())
    ranked = [c for _, c in words.most_common()]
    coverage = {str(k): round(sum(ranked[:k]) / n_words, 4) if n_words else 0.0 for k in (100, 1000, 10000)}
    top = max(lengths, default=0)
    width = max(1, -(-top // bins)) if top else 1
    hist = Counter(min(n // width, bins - 1) for n in lengths)
    return {
        "files": len(paths), "bytes": total_bytes, "chars": sum(chars.values()), "lines": len(lengths),
        "empty_lines": sum(1 for n in lengths if n == 0), "words": n_words, "unique_words": len(words),
        "unique_chars": len(chars), "word_coverage_top_k": coverage,
        "line_length": {"mean": round(sum(lengths) / len(lengths), 2) if lengths else 0.0, "max": top,
                        "histogram": [{"from": i * width, "to": (i + 1) * width - 1, "lines": hist.get(i, 0)}
                                      for i in range(bins)]},
    }


def clean(text: str) -> str:
    """NFC, no control characters, no trailing spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip("\n") + "\n"


def split(text: str, val_fraction: float | None = 0.1, val_lines: int | None = None) -> tuple[str, str]:
    """First lines for training, the last ones for validation (the guides' head/tail split)."""
    lines = text.splitlines(keepends=True)
    if val_lines is None:
        if not 0.0 < (val_fraction or 0.0) < 1.0:
            raise UserError(f"--val-fraction must be in (0, 1), got {val_fraction}")
        val_lines = max(1, round(len(lines) * val_fraction))
    if not 0 < val_lines < len(lines):
        raise UserError(f"cannot hold out {val_lines} of {len(lines)} lines")
    return "".join(lines[:-val_lines]), "".join(lines[-val_lines:])


def tokenize(paths: list[str], out: str, kind: str = "byte", vocab_size: int = 10000,
             tokenizer_path: str | None = None, workers: int | None = None) -> dict:
    from lm_lightning.data import cache
    from lm_lightning.data.sources import TextFiles
    from lm_lightning.data.tokenizers import (
        ByteTokenizer,
        CharTokenizer,
        load_bpe_file,
        load_gpt2,
        save_bpe_file,
        train_bpe,
    )

    source = TextFiles(paths, val_path=paths)  # every file, in order, as one split
    if kind == "byte":
        tok = ByteTokenizer()
    elif kind == "char":
        tok = CharTokenizer("".join(set("".join(source.chunks("train")))))
    elif kind == "gpt2":
        tok = load_gpt2()
    elif kind == "bpe":
        if tokenizer_path and Path(tokenizer_path).is_file():
            tok = load_bpe_file(tokenizer_path)
        else:
            tok = train_bpe(source.chunks("train"), vocab_size)
            save_bpe_file(tok, tokenizer_path or f"{out}.tokenizer.json")
    else:
        raise UserError(f"--tokenizer must be char, byte, bpe or gpt2, got {kind!r}")
    n = cache.default_workers() if workers is None else max(1, workers)
    size = source.size_bytes("train")
    if size < cache.PARALLEL_MIN_BYTES and workers is None:
        n = 1
    return cache.write_tokens(source.chunks("train"), tok, out, tok.vocab_size, workers=n,
                              total_chars=size, description=f"tokenizing {len(paths)} file(s)",
                              meta={"inputs": [str(p) for p in paths]}, progress=None)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lm_lightning.prepare", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("analyze", help="counts, vocabulary coverage, line-length histogram (JSON)")
    a.add_argument("files", nargs="+")
    a.add_argument("--bins", type=int, default=10)
    c = sub.add_parser("clean", help="normalise text and drop control characters")
    c.add_argument("input")
    c.add_argument("output")
    s = sub.add_parser("split", help="first lines to TRAIN, last lines to VAL")
    s.add_argument("input")
    s.add_argument("train")
    s.add_argument("val")
    s.add_argument("--val-fraction", type=float, default=0.1)
    s.add_argument("--val-lines", type=int, default=None)
    t = sub.add_parser("tokenize", help="text files to a uint16/uint32 token file plus a .json sidecar")
    t.add_argument("files", nargs="+")
    t.add_argument("--out", required=True)
    t.add_argument("--tokenizer", default="byte", choices=["char", "byte", "bpe", "gpt2"])
    t.add_argument("--vocab-size", type=int, default=10000)
    t.add_argument("--tokenizer-path", default=None)
    t.add_argument("--workers", type=int, default=None)
    return p


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["tokenize"] and not any(a.startswith("--") for a in argv[1:]):
        with exit_on_user_error():
            inputs, opts = parse_key_values(argv[1:])
            print(json.dumps(tokenize_corpus(inputs, opts)))
        return
    args = build_parser().parse_args(argv)
    with exit_on_user_error():
        if args.command == "analyze":
            print(json.dumps(analyze(args.files, args.bins), indent=2))
        elif args.command == "clean":
            text = _read(args.input)
            cleaned = clean(text)
            Path(args.output).write_text(cleaned, encoding="utf-8")
            print(json.dumps({"input_chars": len(text), "output_chars": len(cleaned), "out": args.output}))
        elif args.command == "split":
            train, val = split(_read(args.input), args.val_fraction, args.val_lines)
            Path(args.train).write_text(train, encoding="utf-8")
            Path(args.val).write_text(val, encoding="utf-8")
            print(json.dumps({"train_lines": train.count("\n"), "val_lines": val.count("\n")}))
        else:
            meta = tokenize(args.files, args.out, args.tokenizer, args.vocab_size, args.tokenizer_path, args.workers)
            print(json.dumps({k: v for k, v in meta.items() if k != "tokenizer"} | {"out": args.out}))


if __name__ == "__main__":
    main()
