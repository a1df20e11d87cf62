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
import os
import re
import shutil
import sys
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

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


OPTIONS = {"out": None, "tokenizer": "byte", "tokenizer_path": None, "vocab_size": 10000, "workers": 1,
           "shard_tokens": 100_000_000, "val_tokens": 0, "text_field": "text", "dtype": "auto", "progress": None}
_SCALE = {"k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}


def count(value: Any, key: str) -> int:
    """``100M``, ``1e8``, ``100_000_000``: a non-negative token count."""
    text = str(value).strip().lower().replace("_", "")
    try:
        n = float(text[:-1]) * _SCALE[text[-1]] if text and text[-1] in _SCALE else float(text)
    except ValueError:
        n = -1
    if n < 0 or n != int(n):
        raise UserError(f"{key} must be a whole number of tokens (e.g. 100M, 1e8), got {value!r}")
    return int(n)


def parse_key_values(argv: list[str]) -> tuple[list[str], dict[str, Any]]:
    """Inputs and ``key=value`` options of ``tokenize`` (a value may also be quoted by the shell)."""
    inputs, opts = [], dict(OPTIONS)
    for arg in argv:
        key, eq, value = arg.partition("=")
        if eq and not arg.startswith("hf:") and "/" not in key:
            if key not in OPTIONS:
                raise UserError(f"prepare tokenize: unknown option {key!r}; known: {', '.join(OPTIONS)}")
            opts[key] = value
        else:
            inputs.append(arg)
    if not opts["out"]:
        raise UserError("prepare tokenize needs out=DIR (token shards) or out=FILE.bin (one file)")
    for key in ("shard_tokens", "val_tokens", "vocab_size"):
        opts[key] = count(opts[key], key)
    if opts["shard_tokens"] < 1:
        raise UserError("shard_tokens must be at least 1")
    try:
        opts["workers"] = max(1, int(opts["workers"]))
    except ValueError as exc:
        raise UserError(f"workers must be a whole number, got {opts['workers']!r}") from exc
    if opts["progress"] is not None:
        opts["progress"] = str(opts["progress"]).lower() in ("1", "true", "yes", "on")
    return inputs, opts


def build_tokenizer(opts: dict[str, Any], corpus: Any) -> Any:
    """The tokenizer with an end-of-text id (byte/char get one), from a file, a folder or the corpus."""
    from lm_lightning.data.tokenizers import (
        ByteTokenizer,
        CharTokenizer,
        load_bpe_file,
        load_gpt2,
        load_hf_tokenizer,
        train_bpe,
    )

    kind, path = opts["tokenizer"], opts["tokenizer_path"]
    if kind == "byte":
        return ByteTokenizer(eot=True)
    if kind == "char":
        chars: set[str] = set()
        for text, _ in corpus.documents():
            chars.update(text)
        if not chars:
            raise UserError("the corpus is empty: no document has any text")
        return CharTokenizer("".join(chars), eot=True)
    if kind == "gpt2":
        return load_gpt2(path or "gpt2")
    if kind == "hf":
        return load_hf_tokenizer(path)
    if kind == "bpe":
        if path:
            return load_bpe_file(path)
        return train_bpe((t for t, _ in corpus.documents()), opts["vocab_size"])
    raise UserError(f"tokenizer must be one of byte, char, bpe, gpt2, hf; got {kind!r}")


def tokenize_corpus(inputs: list[str], opts: dict[str, Any]) -> dict[str, Any]:
    """``prepare tokenize ... out=DIR|FILE.bin`` (see the module docstring and data/shards.py)."""
    import numpy as np

    from lm_lightning.data import shards
    from lm_lightning.data.corpus import Corpus, expand_inputs

    out = Path(opts["out"])
    single = out.suffix in (".bin", ".ids")
    corpus = Corpus(expand_inputs(inputs), opts["text_field"])
    corpus.check()
    identity = {"inputs": [i.identity() for i in corpus.inputs], "text_field": opts["text_field"],
                "tokenizer": opts["tokenizer"], "tokenizer_path": opts["tokenizer_path"],
                "vocab_size": opts["vocab_size"] if opts["tokenizer"] == "bpe" else None, "dtype": opts["dtype"],
                "shard_tokens": None if single else opts["shard_tokens"], "val_tokens": opts["val_tokens"]}
    if not single and out.exists() and not out.is_dir():
        raise UserError(f"out={out} exists and is not a folder (a shard folder, or out=FILE.bin for one file)")
    plan_file = out / "plan.json"
    old = None
    if not single and plan_file.is_file():
        old = json.loads(plan_file.read_text())
        if old.get("identity") != identity:
            raise UserError(f"{out} holds shards of another tokenization (other inputs or options); "
                            f"use a new out=DIR or delete this one")
        if (out / "meta.json").is_file():
            meta = json.loads((out / "meta.json").read_text())
            return {"out": str(out), "complete": "already", "tokens": meta["tokens"], "shards": meta["shards"]}
    elif not single and out.is_dir() and any(out.iterdir()):
        raise UserError(f"out={out} is a folder that is not empty and holds no shards of ours; use a new folder")
    if old is not None:
        from lm_lightning.data.tokenizers import from_spec

        tok = from_spec(old["tokenizer"])
    else:
        tok = build_tokenizer(opts, corpus)
    eot = getattr(tok, "eot_id", None)
    if eot is None:
        raise UserError(f"the {tok.kind} tokenizer has no end-of-text token (<|endoftext|> or eos_token), "
                        f"which goes after every document; use one that has it")
    vocab = int(tok.vocab_size)
    if opts["dtype"] == "auto":
        dtype = np.dtype(np.uint16 if vocab <= 65536 else np.uint32)  # data.tokens.dtype_for_vocab (no torch here)
    elif opts["dtype"] in ("uint16", "uint32"):
        dtype = np.dtype(opts["dtype"])
        if vocab - 1 > np.iinfo(dtype).max:
            raise UserError(f"a vocabulary of {vocab:,} ids does not fit dtype={opts['dtype']} "
                            f"(ids up to {np.iinfo(dtype).max:,}); use dtype=uint32 or dtype=auto")
    else:
        raise UserError(f"dtype must be auto, uint16 or uint32, got {opts['dtype']!r}")
    plan = {"identity": identity, "inputs": [i.label() for i in corpus.inputs], "text_field": opts["text_field"],
            "tokenizer": tok.spec(), "tokenizer_key": shards.tokenizer_key(tok.spec()), "vocab_size": vocab,
            "eot_id": int(eot), "dtype": dtype.name, "shard_tokens": opts["shard_tokens"],
            "val_tokens": 0 if single else opts["val_tokens"], "batch_docs": shards.BATCH_DOCS,
            "batch_chars": shards.BATCH_CHARS}
    if old is not None:  # a rerun completes the plan it finds, batching included
        plan.update({k: old[k] for k in ("batch_docs", "batch_chars", "tokenizer", "tokenizer_key") if k in old})
    created = False
    if single:
        work = out.with_name(f"{out.name}.{os.getpid()}.parts")
        plan["shard_tokens"] = 1 << 62
        created = True
    else:
        created = not out.exists()
        work = out
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not single and old is None:
            if hasattr(tok, "to_json"):
                (work / "tokenizer.json").write_text(tok.to_json(), encoding="utf-8")
            shards._write_json(plan_file, plan)
        stats = shards.write_shards(corpus, tok, work, plan, workers=opts["workers"], progress=opts["progress"])
        done = shards.finished_shards(work, "train")
        if not done or sum(m["tokens"] for m in done) == 0:
            what = "all of it went to validation (lower val_tokens)" if shards.finished_shards(work, "val") \
                else "no document has any text"
            raise UserError(f"the corpus gives no training tokens: {what}")
        if single:
            side = {"dtype": dtype.name, "tokens": done[0]["tokens"], "vocab_size": vocab, "tokenizer": tok.spec(),
                    "eot_id": int(eot), "inputs": plan["inputs"]}
            shards._write_json(Path(f"{out}.json.tmp.final"), side)
            os.replace(work / shards.shard_name("train", 0), out)
            os.replace(Path(f"{out}.json.tmp.final"), Path(f"{out}.json"))
            shutil.rmtree(work, ignore_errors=True)
            return {"out": str(out), "tokens": side["tokens"], "dtype": dtype.name, "vocab_size": vocab, **stats}
        meta = shards.finalize(work, plan)
    except UserError:
        shards.remove_outputs(work, created)  # bad input: no shard left behind
        raise
    except KeyboardInterrupt:
        if single:
            shutil.rmtree(work, ignore_errors=True)
        else:  # finished shards stay: the same command resumes from them
            print(f"interrupted; rerun the same command to resume from the finished shards in {out}",
                  file=sys.stderr)
        raise
    return {"out": str(out), "tokens": meta["tokens"], "shards": {k: len(v) for k, v in meta["shards"].items()},
            "dtype": dtype.name, "vocab_size": vocab, "eot_id": int(eot), **stats}


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
