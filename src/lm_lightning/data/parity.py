"""A tokenizer for the Collatz parity alphabet, so Collatz checkpoints load like text ones."""

from __future__ import annotations

from lm_lightning import collatz


class ParityTokenizer:
    """'0101' <-> [BOS, 0, 1, 0, 1]; decode drops BOS and PAD (and anything outside the alphabet)."""

    bos_id, pad_id = collatz.BOS, collatz.PAD
    vocab_size = collatz.VOCAB_SIZE
    _BITS = {"0": collatz.BIT0, "1": collatz.BIT1}

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        bad = set(text) - set(self._BITS)
        if bad:
            raise ValueError(f"a parity vector holds only 0 and 1, got {sorted(bad)}")
        return ([self.bos_id] if add_bos else []) + [self._BITS[c] for c in text]

    def decode(self, ids) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        return "".join("0" if i == collatz.BIT0 else "1" for i in ids if i in (collatz.BIT0, collatz.BIT1))

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return "ParityTokenizer(BIT0=0, BIT1=1, BOS=2, PAD=3)"
