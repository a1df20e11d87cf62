"""Tokenizers for text data, and the plain-data spec that travels with every checkpoint.

Five kinds: ``char`` (vocabulary from the data's characters, nanoGPT's shakespeare_char),
``byte`` (UTF-8 bytes, nothing to train), ``bpe`` (a byte-level BPE trained with the Hugging
Face ``tokenizers`` library and cached as ``tokenizer.json``), ``gpt2`` (transformers'
pretrained tokenizer) and ``hf`` (any fast tokenizer from a local transformers folder, e.g. the
one of a Llama model used with ``model.init_from``). ``spec()`` returns plain containers only
(kind, vocabulary or JSON string, or hub name), so a checkpoint that stores it stays loadable with
``torch.load(weights_only=True)``; :func:`from_spec` rebuilds the tokenizer from it.

End of text (``eot_id``, put between documents when document boundaries are on): BPE and
GPT-2 have ``<|endoftext|>``; ``char`` and ``byte`` get one extra id after their symbols only
when built with ``eot=True`` (``byte``: id 256 of 257; ``char``: id ``len(chars)``), so their
vocabularies are unchanged otherwise. The extra id decodes as the text ``<|endoftext|>``, as
GPT-2's does; text never encodes to it.

Heavy libraries (tokenizers, transformers) are imported inside the functions that need them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lm_lightning.errors import UserError

KINDS = ("char", "byte", "bpe", "gpt2", "hf")
# GPT-2's vocabulary: 50,000 merges + 256 bytes + <|endoftext|>.
GPT2_VOCAB_SIZE = 50257
# The end-of-text token of GPT-2 and of the BPE tokenizers trained here: the one spelling of it.
EOT_TEXT = "<|endoftext|>"


class CharTokenizer:
    kind = "char"

    def __init__(self, chars: str, eot: bool = False) -> None:
        if not chars:
            raise UserError("char tokenizer: the training text is empty")
        self.chars = "".join(sorted(set(chars)))
        self.eot_id = len(self.chars) if eot else None
        self.vocab_size = len(self.chars) + (1 if eot else 0)
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        # Code points below 65536 map through a lookup table: encoding a large text is one
        # numpy gather instead of a Python loop.
        codes = np.frombuffer(self.chars.encode("utf-32-le"), dtype=np.uint32)
        self._table: np.ndarray | None = None
        if codes.max() < 65536:
            self._table = np.full(65536, -1, dtype=np.int64)
            self._table[codes] = np.arange(len(codes))

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        if self._table is not None and (codes.size == 0 or codes.max() < 65536):
            ids = self._table[codes]
        else:
            ids = np.array([self._stoi.get(c, -1) for c in text], dtype=np.int64)
        if ids.size and ids.min() < 0:
            bad = sorted({text[i] for i in np.flatnonzero(ids < 0)[:20]})
            raise UserError(f"char tokenizer: characters not in the vocabulary: {bad!r}")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        n = len(self.chars)
        return "".join(self.chars[i] if i < n else EOT_TEXT for i in ids if 0 <= i < self.vocab_size)

    def spec(self) -> dict[str, Any]:
        return {"kind": "char", "chars": self.chars, **({"eot": True} if self.eot_id is not None else {})}


class ByteTokenizer:
    kind = "byte"

    def __init__(self, eot: bool = False) -> None:
        self.eot_id = 256 if eot else None
        self.vocab_size = 257 if eot else 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, ids: Iterable[int]) -> str:
        ids = [i for i in ids if 0 <= i < self.vocab_size]
        if self.eot_id is None or self.eot_id not in ids:
            return bytes(ids).decode("utf-8", errors="replace")
        out, run = [], []
        for i in ids + [self.eot_id]:
            if i == self.eot_id:
                out.append(bytes(run).decode("utf-8", errors="replace"))
                run = []
            else:
                run.append(i)
        return EOT_TEXT.join(out)

    def spec(self) -> dict[str, Any]:
        return {"kind": "byte", **({"eot": True} if self.eot_id is not None else {})}


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer``: a trained BPE (``bpe``), GPT-2's (``gpt2``) or a
    transformers folder's (``hf``; its special tokens travel in ``special``, and none are added
    when encoding: training text is one stream, not separate sequences)."""

    def __init__(self, kind: str, tok: Any, name: str | None = None, eot: str | None = None,
                 special: dict[str, str] | None = None) -> None:
        self.kind, self.tok, self.name = kind, tok, name
        self.vocab_size = int(tok.get_vocab_size(with_added_tokens=True))
        self.eot_id = tok.token_to_id(eot) if eot else None
        self.special = dict(special or {})
        self._add_special = kind != "hf"

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=self._add_special).ids

    def encode_array(self, text: str) -> np.ndarray:
        return np.asarray(self.encode(text), dtype=np.int64)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=self._add_special)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def to_json(self) -> str:
        return self.tok.to_str()

    def spec(self) -> dict[str, Any]:
        # GPT-2's tokenizer is embedded too (about 1 MB), so checkpoints work offline.
        if self.kind == "gpt2":
            return {"kind": "gpt2", "name": self.name or "gpt2", "json": self.to_json()}
        if self.kind == "hf":
            return {"kind": "hf", "json": self.to_json(), "special": dict(self.special)}
        return {"kind": "bpe", "json": self.to_json()}


def from_spec(spec: dict[str, Any] | None) -> CharTokenizer | ByteTokenizer | HFTokenizer | None:
    """Rebuild a tokenizer from the plain spec stored in a checkpoint (None when there is none)."""
    if not spec:
        return None
    kind = spec.get("kind")
    if kind == "char":
        return CharTokenizer(spec["chars"], eot=bool(spec.get("eot")))
    if kind == "byte":
        return ByteTokenizer(eot=bool(spec.get("eot")))
    if kind == "bpe":
        from tokenizers import Tokenizer

        return HFTokenizer("bpe", Tokenizer.from_str(spec["json"]), eot=EOT_TEXT)
    if kind == "gpt2":
        if spec.get("json"):
            from tokenizers import Tokenizer

            return HFTokenizer("gpt2", Tokenizer.from_str(spec["json"]), name=spec.get("name"), eot=EOT_TEXT)
        return load_gpt2(spec.get("name") or "gpt2")
    if kind == "hf":
        from tokenizers import Tokenizer

        special = dict(spec.get("special") or {})
        return HFTokenizer("hf", Tokenizer.from_str(spec["json"]), eot=special.get("eos_token"), special=special)
    raise UserError(f"unknown tokenizer kind {kind!r}; known: {list(KINDS)}")


def hub_hint() -> str:
    home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    return f"HF_HOME={home}; point HF_HOME at a cache that has it"


def load_gpt2(name: str = "gpt2") -> HFTokenizer:
    """GPT-2's pretrained tokenizer from the Hugging Face cache or hub; one-line error offline."""
    from lm_lightning.data.hub import ensure_mode

    ensure_mode()
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise UserError(
            f"tokenizer {name!r} could not be loaded from the Hugging Face hub or cache ({hub_hint()}); "
            f"offline, use a local tokenizer instead: tokenizer=bpe or tokenizer=char "
            f"(local data: data=text data.train_path=...)"
        ) from exc
    backend = getattr(hf, "backend_tokenizer", None) or getattr(hf, "_tokenizer", None)
    if backend is None:
        raise UserError(f"tokenizer {name!r} has no fast (tokenizers) backend")
    return HFTokenizer("gpt2", backend, name=name, eot=EOT_TEXT)


HF_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token")


def load_hf_tokenizer(path: str | Path | None) -> HFTokenizer:
    """``tokenizer=hf tokenizer.path=DIR``: the fast tokenizer of a local transformers folder."""
    if not path or not Path(path).is_dir():
        raise UserError(f"tokenizer=hf needs tokenizer.path=DIR, a local transformers folder with a tokenizer "
                        f"(or model.init_from=DIR holding one); got {path!r}")
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise UserError(f"tokenizer=hf: no tokenizer could be loaded from {path} ({type(exc).__name__})") from exc
    backend = getattr(hf, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"tokenizer=hf: the tokenizer in {path} has no fast (tokenizers) backend")
    special = {k: str(getattr(hf, k)) for k in HF_SPECIAL if getattr(hf, k, None)}
    return HFTokenizer("hf", backend, name=str(path), eot=special.get("eos_token"), special=special)


def train_bpe(texts: Iterator[str], vocab_size: int, min_frequency: int = 2) -> HFTokenizer:
    """Train a byte-level BPE on an iterator of texts (GPT-2's pre-tokenization and decoder)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise UserError(f"tokenizer.vocab_size must be at least 257 for byte-level BPE, got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return HFTokenizer("bpe", tok, eot=EOT_TEXT)


def load_bpe_file(path: str | Path) -> HFTokenizer:
    from tokenizers import Tokenizer

    p = Path(path)
    if not p.is_file():
        raise UserError(f"tokenizer file not found: {p}")
    try:
        return HFTokenizer("bpe", Tokenizer.from_file(str(p)), eot=EOT_TEXT)
    except Exception as exc:
        raise UserError(f"cannot read tokenizer file {p}: {exc}") from exc


def save_bpe_file(tok: HFTokenizer, path: str | Path) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f"{p.name}.{os.getpid()}.tmp")
    tmp.write_text(tok.to_json(), encoding="utf-8")
    os.replace(tmp, p)


def ready_made(tok_cfg: dict[str, Any], eot: bool) -> ByteTokenizer | HFTokenizer | None:
    """The tokenizers that need no corpus: ``byte`` (with an end-of-text id when ``eot``),
    ``gpt2`` (``tokenizer.name``) and ``hf`` (``tokenizer.path``); None for the others."""
    kind = tok_cfg.get("kind")
    if kind == "byte":
        return ByteTokenizer(eot=eot)
    if kind == "gpt2":
        return load_gpt2(tok_cfg.get("name") or "gpt2")
    if kind == "hf":  # a local transformers folder's tokenizer (train's tokenizer=hf step usually sets it first)
        return load_hf_tokenizer(tok_cfg.get("path"))
    return None
