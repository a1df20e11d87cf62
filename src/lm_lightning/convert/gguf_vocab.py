"""Our tokenizers as GGUF tokenizer metadata (``tokenizer.ggml.*``), or a one-line reason why not.

GGUF describes a tokenizer by data, not by code: a model type, a pre-tokenizer *name* that the
runtime maps to its own split regex, the token strings, the merges and each token's type. Only
what a runtime can reproduce exactly is written:

- ``bpe``, ``gpt2`` and ``hf`` tokenizers that are GPT-2-style byte-level BPE: the ``tokenizers``
  ByteLevel pre-tokenizer with its GPT-2 regex (``use_regex=True``), no prefix space, no
  normalizer, no byte fallback, no word prefixes/suffixes. They become ``tokenizer.ggml.model =
  gpt2`` with ``tokenizer.ggml.pre = gpt-2``: llama.cpp's GPT-2 pre-tokenizer splits with that same
  regex (``'s|'t|...| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``), and transformers
  rebuilds a GPT2Tokenizer, whose pre-tokenizer is the same ByteLevel. Tokens are stored in the
  byte-to-character alphabet ("Ġ" for a space), as GPT-2's are.
- ``byte``: the 256 byte characters as the vocabulary and no merges, so every byte stays one token
  whatever the split (ids equal ``ByteTokenizer``'s for any text).
- ``char`` over an ASCII alphabet: the same construction, with the corpus's characters as the only
  tokens (id = position in the sorted alphabet, as ``CharTokenizer``'s). Each ASCII character is one
  byte, so with no merges every character is one token. A char vocabulary with non-ASCII
  characters would need byte tokens that are not in it (a character of 2 to 4 bytes is reached
  only through merges of single-byte tokens), so it is refused.

Special tokens (``added_tokens`` marked special) are CONTROL tokens; added non-special tokens are
USER_DEFINED (matched whole in text, as ``tokenizers`` does). A model whose embedding has more rows
than the tokenizer has tokens gets ``[PAD<id>]`` placeholders of type UNUSED for the extra ids, as
llama.cpp's converter does; text never encodes to them. No BOS/EOS is added when encoding
(``add_bos_token = false``), since training streams carry none.

Checked against llama.cpp's source (the copy vendored in llama-cpp-python 0.3.36): ``gpt-2`` selects
LLAMA_VOCAB_PRE_TYPE_GPT2, whose hand-written splitter implements GPT-2's regex including the
final ``\s+``; a ``gpt2`` tokenizer without ``tokenizer.ggml.merges`` is a load error, so byte and
char vocabularies get an empty array; without BOS/EOS ids (byte and char built without an
end-of-text id) llama.cpp defaults both to id 11, which then stops generation unless
``--ignore-eos``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from lm_lightning.data.tokenizers import EOT_TEXT as EOT
from lm_lightning.errors import UserError

# llama.cpp's token types (gguf.TokenType), written as plain ints so that this module needs no gguf.
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5


@dataclass
class GGUFVocab:
    model: str  # tokenizer.ggml.model
    pre: str  # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    special: dict[str, int] = field(default_factory=dict)  # bos / eos / eot / unk / pad -> id


def _refuse(kind: str, why: str) -> UserError:
    return UserError(f"format=gguf: the {kind} tokenizer cannot be written as GGUF tokenizer metadata exactly: {why}")


def _pad(tokens: list[str], types: list[int], vocab_size: int, kind: str) -> None:
    if len(tokens) > vocab_size:
        raise _refuse(kind, f"it has {len(tokens)} tokens but the model only {vocab_size} embedding rows")
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        types.append(UNUSED)


def _single_chars(kind: str, symbols: list[str], eot_id: int | None, vocab_size: int) -> GGUFVocab:
    """A vocabulary of one-byte symbols and no merges (byte, ASCII char)."""
    from lm_lightning.convert.tokenizers import byte_alphabet

    alphabet = byte_alphabet()
    tokens = [alphabet[ord(c)] if len(c) == 1 else c for c in symbols]
    types = [NORMAL] * len(tokens)
    special = {}
    if eot_id is not None:
        if eot_id != len(tokens):
            raise _refuse(kind, f"end-of-text id {eot_id} is not the id after its {len(tokens)} symbols")
        tokens.append(EOT)
        types.append(CONTROL)
        special = {"bos": eot_id, "eos": eot_id, "eot": eot_id}
    _pad(tokens, types, vocab_size, kind)
    return GGUFVocab("gpt2", "gpt-2", tokens, types, [], special)


def _byte_level_bpe(kind: str, tok: Any, specials: dict[str, str], vocab_size: int) -> GGUFVocab:
    d = json.loads(tok.to_str())
    model, pre = d.get("model") or {}, d.get("pre_tokenizer") or {}
    if model.get("type") != "BPE":
        raise _refuse(kind, f"its model is {model.get('type')!r}, not byte-level BPE")
    if d.get("normalizer") is not None:
        raise _refuse(kind, f"it has a normalizer ({d['normalizer'].get('type')}); GGUF's gpt2 tokenizer has none")
    if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
        desc = pre.get("type") if pre.get("type") != "ByteLevel" else (
            f"ByteLevel(add_prefix_space={pre.get('add_prefix_space')}, use_regex={pre.get('use_regex')})")
        raise _refuse(kind, f"its pre-tokenizer is {desc}; only GPT-2's (ByteLevel with its regex, no prefix "
                            f"space) has a GGUF name (gpt-2)")
    for key in ("byte_fallback", "ignore_merges", "dropout"):
        if model.get(key):
            raise _refuse(kind, f"its BPE model sets {key}={model.get(key)!r}")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise _refuse(kind, "its BPE model uses a subword prefix or word suffix")
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {a["id"]: a for a in d.get("added_tokens") or []}
    for i, a in added.items():
        vocab[a["content"]] = i
    by_id = {i: t for t, i in vocab.items()}
    n = max(by_id) + 1 if by_id else 0
    if len(by_id) != n:
        raise _refuse(kind, f"its ids are not contiguous ({len(by_id)} tokens for ids 0..{n - 1})")
    tokens = [by_id[i] for i in range(n)]
    types = [(CONTROL if added[i].get("special") else USER_DEFINED) if i in added else NORMAL for i in range(n)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    if any(m.count(" ") != 1 for m in merges):
        raise _refuse(kind, "a merge has a token containing a space")
    _pad(tokens, types, vocab_size, kind)
    special = {}
    for key, name in (("bos", "bos_token"), ("eos", "eos_token"), ("unk", "unk_token"), ("pad", "pad_token")):
        if specials.get(name) in vocab:
            special[key] = vocab[specials[name]]
    if "eos" in special:
        special["eot"] = special["eos"]
    return GGUFVocab("gpt2", "gpt-2", tokens, types, merges, special)


def gguf_vocab(tokenizer: Any, vocab_size: int) -> GGUFVocab:
    """The GGUF tokenizer of one of our tokenizers; UserError (one line, why) when it is not exact."""
    kind = getattr(tokenizer, "kind", None)
    if tokenizer is None:
        raise UserError("format=gguf: the checkpoint has no tokenizer; a GGUF file must carry one")
    if kind == "byte":
        return _single_chars(kind, [chr(b) for b in range(256)], tokenizer.eot_id, vocab_size)
    if kind == "char":
        wide = [c for c in tokenizer.chars if ord(c) > 127]
        if wide:
            raise _refuse("char", f"its alphabet has non-ASCII characters ({''.join(wide[:5])!r}...), which GGUF's "
                                  f"byte-level BPE can only reach through byte tokens this vocabulary lacks; "
                                  f"use tokenizer=byte or tokenizer=bpe")
        return _single_chars(kind, list(tokenizer.chars), tokenizer.eot_id, vocab_size)
    if kind in ("bpe", "gpt2"):
        return _byte_level_bpe(kind, tokenizer.tok, {"bos_token": EOT, "eos_token": EOT}, vocab_size)
    if kind == "hf":
        return _byte_level_bpe(kind, tokenizer.tok, tokenizer.special, vocab_size)
    raise UserError(f"format=gguf: tokenizer kind {kind!r} has no GGUF mapping")


def add_to_writer(writer: Any, vocab: GGUFVocab) -> None:
    """Write the ``tokenizer.ggml.*`` keys."""
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    else:  # llama.cpp requires the key for a gpt2 tokenizer; transformers reads "no merges" only from it too
        import gguf

        writer.add_key_value(gguf.Keys.Tokenizer.MERGES, [], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.STRING)
    setters = {"bos": writer.add_bos_token_id, "eos": writer.add_eos_token_id, "eot": writer.add_eot_token_id,
               "unk": writer.add_unk_token_id, "pad": writer.add_pad_token_id}
    for key, token_id in vocab.special.items():
        setters[key](token_id)
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
