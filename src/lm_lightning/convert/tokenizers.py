"""Our tokenizers as transformers fast tokenizers, so ``AutoTokenizer.from_pretrained(DIR)`` loads an export.

- ``bpe`` / ``gpt2`` / ``hf`` already are ``tokenizers`` objects: wrapped as they are.
- ``byte``: a BPE model without merges over GPT-2's byte-to-character alphabet. The ByteLevel
  pre-tokenizer turns each UTF-8 byte b into one visible character, the vocabulary maps that
  character to id b, and with no merges every byte stays one token; the ByteLevel decoder turns
  the characters back into bytes. Ids equal ``ByteTokenizer``'s for any text.
- ``char``: a WordLevel model over the corpus's characters; a Split pre-tokenizer isolates every
  character (``[\\s\\S]`` matches any code point, newlines included) and the Fuse decoder joins the
  tokens without spaces. Ids equal ``CharTokenizer``'s; a character outside the vocabulary is
  an error there too (the WordLevel model's unknown token is not in the vocabulary).

A byte or char tokenizer built with an end-of-text id (``eot=True``: id 256, or ``len(chars)``)
gets ``<|endoftext|>`` as a special token with that id, and it is the folder's bos/eos token.

Decoding never "cleans up" spaces (``clean_up_tokenization_spaces=False``), so decode(encode(s)) == s.
"""

from __future__ import annotations

from typing import Any

from lm_lightning.data.tokenizers import EOT_TEXT as EOT

# Named as the char tokenizer's unknown token but never added to the vocabulary: ids stay the
# corpus's characters, as in CharTokenizer, and an unknown character fails to encode.
CHAR_UNK = "<unk>"


def byte_alphabet() -> list[str]:
    """GPT-2's reversible byte -> character map: printable Latin-1 bytes map to themselves, the
    other 68 to code points 256, 257, ... in byte order (the ByteLevel pre-tokenizer's map)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def byte_backend():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(byte_alphabet())}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def char_backend(chars: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {c: i for i, c in enumerate(chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=CHAR_UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def fast_tokenizer(tokenizer: Any):
    """A PreTrainedTokenizerFast for one of our tokenizers (None when the kind has no mapping)."""
    from transformers import PreTrainedTokenizerFast

    kind = getattr(tokenizer, "kind", None)
    common = {"clean_up_tokenization_spaces": False}
    if kind in ("byte", "char"):
        backend = byte_backend() if kind == "byte" else char_backend(tokenizer.chars)
        if getattr(tokenizer, "eot_id", None) is None:
            return PreTrainedTokenizerFast(tokenizer_object=backend, **common)
        # Built with an end-of-text id (document boundaries): the next id after the symbols.
        from tokenizers import AddedToken

        backend.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
        if backend.token_to_id(EOT) != tokenizer.eot_id:
            raise ValueError(f"{kind} tokenizer: end-of-text id {backend.token_to_id(EOT)} != {tokenizer.eot_id}")
        return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT, eos_token=EOT, **common)
    if kind in ("bpe", "gpt2"):
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer.tok, bos_token=EOT, eos_token=EOT,
                                       unk_token=EOT, **common)
    if kind == "hf":
        return PreTrainedTokenizerFast(tokenizer_object=tokenizer.tok, **tokenizer.special, **common)
    return None


def eos_id(tokenizer: Any) -> int | None:
    """The end-of-text id a model config should carry (None for byte and char tokenizers)."""
    if tokenizer is None:
        return None
    if getattr(tokenizer, "kind", None) == "hf":
        eos = tokenizer.special.get("eos_token")
        return tokenizer.tok.token_to_id(eos) if eos else None
    return getattr(tokenizer, "eot_id", None)


def bos_id(tokenizer: Any) -> int | None:
    if getattr(tokenizer, "kind", None) == "hf":
        bos = tokenizer.special.get("bos_token")
        return tokenizer.tok.token_to_id(bos) if bos else None
    return eos_id(tokenizer)
