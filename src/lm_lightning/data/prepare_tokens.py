"""``prepare tokenize INPUT... out=DIR|FILE.bin key=value...``: options, tokenizer, plan, run.

The command line's side of :mod:`lm_lightning.data.shards` (the writer) and
:mod:`lm_lightning.data.corpus` (the inputs); ``python -m lm_lightning.prepare`` dispatches here.
Imports neither torch nor Lightning, so the command starts in well under a second.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from lm_lightning.errors import UserError

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
    from lm_lightning.data.formats import dtype_for_vocab, tokenizer_key

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
        dtype = dtype_for_vocab(vocab)
    elif opts["dtype"] in ("uint16", "uint32"):
        dtype = np.dtype(opts["dtype"])
        if vocab - 1 > np.iinfo(dtype).max:
            raise UserError(f"a vocabulary of {vocab:,} ids does not fit dtype={opts['dtype']} "
                            f"(ids up to {np.iinfo(dtype).max:,}); use dtype=uint32 or dtype=auto")
    else:
        raise UserError(f"dtype must be auto, uint16 or uint32, got {opts['dtype']!r}")
    plan = {"identity": identity, "inputs": [i.label() for i in corpus.inputs], "text_field": opts["text_field"],
            "tokenizer": tok.spec(), "tokenizer_key": tokenizer_key(tok.spec()), "vocab_size": vocab,
            "eot_id": int(eot), "dtype": dtype.name, "shard_tokens": opts["shard_tokens"],
            "val_tokens": 0 if single else opts["val_tokens"], "batch_docs": shards.BATCH_DOCS,
            "batch_chars": shards.BATCH_CHARS}
    if old is not None:  # a rerun completes the plan it finds, batching included
        plan.update({k: old[k] for k in ("batch_docs", "batch_chars", "tokenizer", "tokenizer_key") if k in old})
    created = False
    if single:
        # One fixed work folder beside the file: a killed run's is found again and cleared (its one
        # shard never finished), and a finished run leaves only the file and its sidecar.
        work = out.with_name(f"{out.name}.parts")
        for stale in [work, *out.parent.glob(f"{out.name}.*.parts")]:  # *.<pid>.parts: before the fixed name
            shutil.rmtree(stale, ignore_errors=True)
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
            shards._write_json(work / "sidecar.json", side)
            os.replace(work / shards.shard_name("train", 0), out)
            os.replace(work / "sidecar.json", Path(f"{out}.json"))
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
