"""`python -m lm_lightning.collatz N [N ...]`: the reference trajectory of each number as a JSON line."""
from __future__ import annotations

import json
import sys

from lm_lightning.collatz.reference import reference


def _parse_cli_number(arg: str) -> int:
    try:
        n = int(arg)
    except ValueError:
        raise ValueError(f"not an integer: {arg!r}") from None
    if n < 2:
        raise ValueError(f"N must be >= 2, got {n}")
    return n


def main(argv=None) -> int:
    """`python -m lm_lightning.collatz N [N ...]`: one JSON object per number per line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in (["-h"], ["--help"]):
        print("usage: python -m lm_lightning.collatz N [N ...]  (integers N >= 2); prints one "
              "JSON object per N: n, total_stopping_time, stopping_time, max_value, parity_vector")
        return 0
    try:
        if not argv:
            raise ValueError("expected at least one integer N >= 2 (see --help)")
        ns = [_parse_cli_number(a) for a in argv]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for n in ns:
        print(json.dumps(reference(n).to_json()))
    return 0
