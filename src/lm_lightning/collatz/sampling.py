"""The Collatz training stream: which numbers sample i of a seed's stream holds.

Sample i is a pure function of (seed, i), so any split of the indices over workers, ranks and batches
reproduces the same stream (exact resume needs nothing but the step).
"""
from __future__ import annotations

import numpy as np

from lm_lightning.collatz.reference import DELAY_RECORDS

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z):
    """splitmix64 finalizer on a uint64 array (wrapping arithmetic)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _words(seed: int, idx: np.ndarray, count: int) -> np.ndarray:
    """(len(idx), count) random uint64 words, each a pure function of (seed, index, word)."""
    with np.errstate(over="ignore"):
        key = _mix64(np.array([seed % 2 ** 64], np.uint64) ^ np.uint64(0x5EED5EED5EED5EED))
        per = _mix64(key + (idx + np.uint64(1)) * _GOLDEN)                # (N,)
        j = np.arange(1, count + 1, dtype=np.uint64)
        return _mix64(per[:, None] + j[None, :] * _GOLDEN)               # (N, count)


def sample_numbers(seed: int, indices, *, hard_fraction: float = 0.5,
                   normal_start: int = 2 ** 20, hard_bits: tuple = (69, 100)) -> list:
    """Sample i of the stream is a pure function of (seed, i) and the keyword settings, so any
    split of the indices over workers/ranks/batches reproduces the same stream.
    Normal: n = normal_start + i (disjoint index sets give distinct n).  Hard (with probability
    hard_fraction): 75% random n with bit length uniform in hard_bits, 25% special patterns
    2^k - 1, 2^k + 1, delay record * 2^j; all have bit length in hard_bits when possible."""
    lo, hi = hard_bits
    if not (2 <= lo <= hi) or not 0.0 <= hard_fraction <= 1.0 or normal_start < 2:
        raise ValueError("need 2 <= hard_bits[0] <= hard_bits[1], 0 <= hard_fraction <= 1, "
                         "normal_start >= 2")
    idx_list = list(map(int, indices))
    if idx_list and min(idx_list) < 0:
        raise ValueError("indices must be >= 0")
    span, records = hi - lo + 1, [r for r in DELAY_RECORDS if r.bit_length() <= hi]
    nr = -(-hi // 64)                                                  # random words per n
    w = _words(seed, np.array(idx_list, np.uint64), 5 + nr)           # (N, 5 + nr)
    u = (w[:, :2] >> np.uint64(11)).astype(np.float64) * 2.0 ** -53   # (N, 2) in [0, 1)
    # Random n, built in numpy: keep bl - 1 random low bits, set bit bl - 1.
    top = (lo + w[:, 3] % np.uint64(span)).astype(np.int64) - 1       # (N,) top bit index
    keep = np.clip(top[:, None] - 64 * np.arange(nr), 0, 64)          # (N, nr) bits kept
    rnd = w[:, 5:] & np.where(keep == 64, ~np.uint64(0),
                              (np.uint64(1) << np.minimum(keep, 63).astype(np.uint64)) - np.uint64(1))
    rnd[np.arange(len(w)), top // 64] |= np.uint64(1) << (top % 64).astype(np.uint64)
    raw, size = rnd.astype("<u8").tobytes(), 8 * nr
    out = []
    for k, (i, hard, special, kind, p1, p2) in enumerate(zip(
            idx_list, (u[:, 0] < hard_fraction).tolist(), (u[:, 1] < 0.25).tolist(),
            (w[:, 2] % np.uint64(3)).tolist(), w[:, 3].tolist(), w[:, 4].tolist())):
        if not hard:
            out.append(normal_start + i)
        elif special and kind == 0:
            out.append((1 << (lo + p1 % span)) - 1)
        elif special and kind == 1:
            out.append((1 << (lo - 1 + p1 % span)) + 1)
        elif special and records:
            rec = records[p1 % len(records)]
            jlo = max(0, lo - rec.bit_length())
            out.append(rec << (jlo + p2 % (hi - rec.bit_length() - jlo + 1)))
        else:
            out.append(int.from_bytes(raw[k * size:(k + 1) * size], "little"))
    return out


def stream_batch(seed: int, batch_index: int, batch_size: int, **kw) -> list:
    """Batch `batch_index` of the stream: samples batch_index*batch_size ... + batch_size - 1."""
    start = batch_index * batch_size
    return sample_numbers(seed, range(start, start + batch_size), **kw)

