"""The exact Collatz (3x+1) oracle: one trajectory at a time in Python ints, with cycle and step-cap
detection, and the batch layout (:class:`ParityBatch`) that the vectorized engine fills too.

Used inside DataLoader workers, so only stdlib + numpy are imported.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

BIT0, BIT1, BOS, PAD = 0, 1, 2, 3
VOCAB_SIZE = 4
ANOMALY_NONE, ANOMALY_STEP_CAP, ANOMALY_CYCLE = 0, 1, 2
ANOMALY_NAMES = {ANOMALY_NONE: "none", ANOMALY_STEP_CAP: "step_cap", ANOMALY_CYCLE: "cycle"}
# Starts of total-stopping-time (delay) records, OEIS A006877; used for "hard" samples.
DELAY_RECORDS = (27, 97, 871, 6171, 77031, 837799, 8400511, 63728127, 670617279,
                 9780657630, 75128138247)


@dataclass(frozen=True)
class CollatzResult:
    n: int
    total_stopping_time: int  # steps to reach 1 (steps done, if anomalous)
    stopping_time: int        # first i >= 1 with x_i < n; -1 if never (anomalous only)
    max_value: int
    parity_vector: str        # x_i mod 2 for i < total_stopping_time, as '0'/'1'
    anomaly: int = ANOMALY_NONE

    def to_json(self) -> dict:
        d = {"n": self.n, "total_stopping_time": self.total_stopping_time,
             "stopping_time": self.stopping_time, "max_value": self.max_value,
             "parity_vector": self.parity_vector}
        if self.anomaly != ANOMALY_NONE:
            d["anomaly"] = ANOMALY_NAMES[self.anomaly]
        return d


def collatz_step(x: int) -> int:
    return 3 * x + 1 if x & 1 else x >> 1


def _check_n(n) -> int:
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"expected an integer, got {n!r}")
    if n < 2:
        raise ValueError(f"n must be >= 2, got {n}")
    return int(n)


def _walk(n: int, max_steps: int, step_fn, exact_cycles: bool):
    """One trajectory, one big-int step at a time.  Cycle check: with exact_cycles=False a
    Brent checkpoint (the value saved at the last power-of-two step) costs one comparison per
    step and catches any cycle within 2x its entry + length; it then returns None and the
    caller replays with exact_cycles=True, which keeps every value to stop at the first revisit."""
    x, steps, sigma, mx, bits = n, 0, -1, n, []
    anomaly, seen, saved, save_at = ANOMALY_NONE, set(), None, 1
    while x != 1:
        if steps >= max_steps:
            anomaly = ANOMALY_STEP_CAP
            break
        if exact_cycles:
            if x in seen:
                anomaly = ANOMALY_CYCLE
                break
            seen.add(x)
        elif x == saved:
            return None
        elif steps == save_at:
            saved, save_at = x, 2 * save_at
        bits.append("1" if x & 1 else "0")
        x = step_fn(x)
        steps += 1
        if x > mx:
            mx = x
        if sigma < 0 and x < n:
            sigma = steps
    return CollatzResult(n, steps, sigma, mx, "".join(bits), anomaly)


def reference(n: int, max_steps: int = 100_000,
              step_fn: Callable[[int], int] = collatz_step) -> CollatzResult:
    """Ground truth, a plain per-number loop.  `step_fn` is injectable so the cycle detection
    can be tested on maps that do have non-trivial cycles (e.g. 3x-1: 5, 14, 7, 20, 10)."""
    n = _check_n(n)
    return _walk(n, max_steps, step_fn, False) or _walk(n, max_steps, step_fn, True)


@dataclass
class ParityBatch:
    bits: np.ndarray                 # uint8 (B, max_len), zero after `lengths`
    lengths: np.ndarray              # int64 (B,) min(total_stopping_time, max_len)
    total_stopping_time: np.ndarray  # int64 (B,)
    stopping_time: np.ndarray        # int64 (B,) -1 if undefined (anomalous)
    truncated: np.ndarray            # bool (B,) total_stopping_time > max_len
    anomaly: np.ndarray              # int8 (B,)

    def __len__(self) -> int:
        return len(self.lengths)


def _make_batch(bits, tst, sigma, anomaly, max_len) -> ParityBatch:
    return ParityBatch(bits, np.minimum(tst, max_len), tst, sigma, tst > max_len, anomaly)


def _fill_from_reference(r: CollatzResult, i, bits, tst, sigma, anomaly, max_len):
    pv = np.frombuffer(r.parity_vector[:max_len].encode(), np.uint8) - ord("0")
    bits[i, :] = 0
    bits[i, :len(pv)] = pv
    tst[i], sigma[i], anomaly[i] = r.total_stopping_time, r.stopping_time, r.anomaly


def reference_batch(ns: Sequence[int], max_len: int, max_steps: int = 100_000) -> ParityBatch:
    """The slow baseline: same output as parity_batch, built number by number."""
    B = len(ns)
    bits, tst = np.zeros((B, max_len), np.uint8), np.zeros(B, np.int64)
    sigma, anomaly = np.zeros(B, np.int64), np.zeros(B, np.int8)
    for i, n in enumerate(ns):
        _fill_from_reference(reference(n, max_steps), i, bits, tst, sigma, anomaly, max_len)
    return _make_batch(bits, tst, sigma, anomaly, max_len)

