"""Throughput of lm_lightning.collatz: vectorized parity_batch vs the per-number reference_batch.

    python bench/collatz_speed.py [--batch-size 512] [--max-len 256] [--repeats 3] [--json]

Hard mode (hard_fraction=1.0: n ~ 2^69..2^100, ~700-1000 steps) is the case the data pipeline
needs to be fast; normal mode (n = 2^20 + i) is reported for reference.  Each mode is timed on
the same few batches for both implementations (best of `repeats`), after checking that both
produce identical batches.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

try:
    from lm_lightning import collatz
except ImportError:  # running from a checkout without an installed package
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
    from lm_lightning import collatz

MODES = {
    "hard": {"hard_fraction": 1.0},
    "normal": {"hard_fraction": 0.0, "normal_start": 2 ** 20},
}
FIELDS = ("bits", "lengths", "total_stopping_time", "stopping_time", "truncated", "anomaly")


def _best_seconds(fn, batches, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for batch in batches:
            fn(batch)
        best = min(best, time.perf_counter() - t0)
    return best


def measure(batch_size: int = 512, max_len: int = 256, repeats: int = 3, n_batches: int = 3,
            seed: int = 0) -> dict:
    """Samples/s of parity_batch and reference_batch per mode, and their ratio (speedup)."""
    collatz.parity_batch([27], max_len)  # build the step tables outside the timed region
    out = {"batch_size": batch_size, "max_len": max_len}
    for name, kw in MODES.items():
        batches = [collatz.stream_batch(seed, i, batch_size, **kw) for i in range(n_batches)]
        fast = collatz.parity_batch(batches[0], max_len)
        slow = collatz.reference_batch(batches[0], max_len)
        for f in FIELDS:
            if not (getattr(fast, f) == getattr(slow, f)).all():
                raise AssertionError(f"{name}: parity_batch and reference_batch differ in {f}")
        total = batch_size * n_batches
        vec = total / _best_seconds(lambda b: collatz.parity_batch(b, max_len), batches, repeats)
        ref = total / _best_seconds(lambda b: collatz.reference_batch(b, max_len), batches, repeats)
        out[name] = {"vectorized_samples_per_s": vec, "reference_samples_per_s": ref,
                     "speedup": vec / ref,
                     "mean_total_stopping_time": float(slow.total_stopping_time.mean())}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--max-len", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", action="store_true", help="print the result dict as JSON")
    args = p.parse_args(argv)
    res = measure(args.batch_size, args.max_len, args.repeats)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"collatz parity_batch vs reference_batch (batch {res['batch_size']}, "
          f"max_len {res['max_len']})")
    for name in MODES:
        r = res[name]
        print(f"  {name:6s}  vectorized {r['vectorized_samples_per_s']:10.0f} samples/s   "
              f"reference {r['reference_samples_per_s']:8.0f} samples/s   "
              f"speedup {r['speedup']:5.1f}x   (mean steps {r['mean_total_stopping_time']:.0f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
