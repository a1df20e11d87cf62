"""Tests for lm_lightning.collatz: reference oracle values, vectorized == reference, anomalies,
the deterministic sample stream, and the CLI."""
from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lm_lightning import collatz as C
from lm_lightning.cli import collatz as collatz_cli
from lm_lightning.collatz import vectorized as CV

pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")   # numpy overflow warnings are bugs here

SRC = Path(__file__).resolve().parents[1] / "src"
FIELDS = ("bits", "lengths", "total_stopping_time", "stopping_time", "truncated", "anomaly")
DTYPES = {"bits": np.uint8, "lengths": np.int64, "total_stopping_time": np.int64,
          "stopping_time": np.int64, "truncated": np.bool_, "anomaly": np.int8}
OEIS = {27: 111, 97: 118, 871: 178, 6171: 261, 77031: 350, 837799: 524}  # A006877 records


def naive(n):
    """Independent, minimal trajectory: the list x_0 = n, ..., 1."""
    xs = [n]
    while xs[-1] != 1:
        x = xs[-1]
        xs.append(3 * x + 1 if x % 2 else x // 2)
    return xs


def assert_same(a: C.ParityBatch, b: C.ParityBatch):
    assert len(a) == len(b)
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == DTYPES[f] and y.dtype == DTYPES[f], f
        assert x.shape == y.shape, f
        bad = np.flatnonzero((x != y).reshape(len(x), -1).any(1))
        assert bad.size == 0, f"{f} differs at rows {bad[:5].tolist()}"


# ---------------------------------------------------------------- reference

@pytest.mark.parametrize("n,steps", sorted(OEIS.items()))
def test_reference_oeis_delay_records(n, steps):
    r = C.reference(n)
    assert r.total_stopping_time == steps
    assert len(r.parity_vector) == steps and r.anomaly == C.ANOMALY_NONE


def test_reference_27():
    r = C.reference(27)
    assert (r.stopping_time, r.max_value, r.parity_vector.count("1")) == (96, 9232, 41)


def test_reference_by_hand():
    # 6, 3, 10, 5, 16, 8, 4, 2, 1
    assert C.reference(6) == C.CollatzResult(6, 8, 1, 16, "01010000")
    # 3, 10, 5, 16, 8, 4, 2, 1: first value below 3 is x_6 = 2
    assert C.reference(3) == C.CollatzResult(3, 7, 6, 16, "1010000")
    assert C.reference(2) == C.CollatzResult(2, 1, 1, 2, "0")


def test_reference_matches_naive_loop():
    for n in list(range(2, 400)) + [2 ** 64 + 1, 2 ** 100 - 1]:
        xs, r = naive(n), C.reference(n)
        assert r.parity_vector == "".join(str(x % 2) for x in xs[:-1])
        assert r.total_stopping_time == len(xs) - 1 and r.max_value == max(xs)
        assert r.stopping_time == next(i for i, x in enumerate(xs) if i and x < n)


@pytest.mark.parametrize("bad", [0, 1, -7, 2.5, "7", True, None])
def test_rejects_bad_inputs(bad):
    with pytest.raises(ValueError):
        C.reference(bad)
    with pytest.raises(ValueError):
        C.parity_batch([27, bad], 16)


# ---------------------------------------------------------------- anomalies

def three_x_minus_one(x):
    return 3 * x - 1 if x & 1 else x // 2


def test_cycle_detected_not_dropped():
    # 5 -> 14 -> 7 -> 20 -> 10 -> 5 is a cycle of the 3x-1 map (1 is never reached)
    r = C.reference(5, step_fn=three_x_minus_one)
    assert r.anomaly == C.ANOMALY_CYCLE
    assert (r.total_stopping_time, r.stopping_time, r.max_value) == (5, -1, 20)
    assert r.parity_vector == "10100"
    assert r.to_json()["anomaly"] == "cycle"
    r = C.reference(7, step_fn=three_x_minus_one)   # same cycle, dropping below 7 at x_3 = 5
    assert (r.anomaly, r.total_stopping_time, r.stopping_time) == (C.ANOMALY_CYCLE, 5, 3)
    assert C.reference(17, step_fn=three_x_minus_one).anomaly == C.ANOMALY_CYCLE
    assert C.reference(16, step_fn=three_x_minus_one).anomaly == C.ANOMALY_NONE


def test_step_cap_reference():
    assert C.reference(27, max_steps=111).anomaly == C.ANOMALY_NONE   # reaches 1 at the cap
    r = C.reference(27, max_steps=110)
    assert (r.anomaly, r.total_stopping_time, r.stopping_time) == (C.ANOMALY_STEP_CAP, 110, 96)
    assert r.parity_vector == C.reference(27).parity_vector[:110]
    r = C.reference(27, max_steps=50)
    assert (r.total_stopping_time, r.stopping_time) == (50, -1)
    assert r.to_json()["anomaly"] == "step_cap" and "anomaly" not in C.reference(27).to_json()


@pytest.mark.parametrize("tail", [0, 10 ** 9])
def test_step_cap_flagged_in_batch(monkeypatch, tail):
    monkeypatch.setattr(CV, "_TAIL_ROWS", tail)   # numpy loop only / scalar path only
    ns = [27, 6, 97, 871, 2 ** 90 - 1] * 20
    true_total = np.array([C.reference(n).total_stopping_time for n in ns])
    for max_steps in (50, 110, 111, 118):
        got = C.parity_batch(ns, 64, max_steps=max_steps)
        assert_same(got, C.reference_batch(ns, 64, max_steps=max_steps))
        assert len(got) == len(ns)   # nothing dropped
        over = true_total > max_steps
        assert (got.anomaly == np.where(over, C.ANOMALY_STEP_CAP, C.ANOMALY_NONE)).all()
        assert (got.total_stopping_time == np.minimum(true_total, max_steps)).all()
    got = C.parity_batch(ns, 64, max_steps=50)
    assert (got.stopping_time[::5] == -1).all() and (got.stopping_time[1::5] == 1).all()


# ---------------------------------------------------------------- vectorized == reference

def _datasets():
    rng = random.Random(1234)
    edges = [2 ** k + d for k in (32, 33, 63, 64, 65, 96, 127) for d in (-1, 1)]
    return {
        "small": list(range(2, 700)),
        "oeis": list(OEIS) * 30,
        "random128": [rng.getrandbits(rng.randint(2, 128)) | 2 for _ in range(250)] + edges,
        "above64": [rng.getrandbits(128) | (1 << 64) for _ in range(100)],
        "hard": C.stream_batch(3, 1, 300, hard_fraction=1.0),
        "mixed": C.stream_batch(4, 2, 300, hard_fraction=0.5),
    }


DATA = _datasets()


@pytest.mark.parametrize("name", sorted(DATA))
@pytest.mark.parametrize("max_len", [16, 256, 2048])
def test_parity_batch_equals_reference(name, max_len):
    ns = DATA[name]
    got, want = C.parity_batch(ns, max_len), C.reference_batch(ns, max_len)
    assert_same(got, want)
    assert got.bits.shape == (len(ns), max_len)
    assert (got.truncated == (got.total_stopping_time > max_len)).all()
    assert (got.lengths == np.minimum(got.total_stopping_time, max_len)).all()


@pytest.mark.parametrize("tail,eps", [(0, None), (10 ** 9, None), (0, 0.5)])
def test_parity_batch_paths(monkeypatch, tail, eps):
    """Numpy loop alone, scalar tail alone, and the exact-compare path of the sigma estimate
    (forced by a huge error budget) must all give the reference result."""
    monkeypatch.setattr(CV, "_TAIL_ROWS", tail)
    if eps is not None:
        monkeypatch.setattr(CV, "_EPS", eps)
    ns = DATA["small"][:300] + DATA["random128"][:150] + DATA["hard"][:150]
    assert_same(C.parity_batch(ns, 200), C.reference_batch(ns, 200))


def test_no_reference_fallback_for_ordinary_inputs(monkeypatch):
    """The exact big-int fallback is for anomalies and limb overflow only: the vectorized path
    must handle ordinary hard-mode numbers itself (else it is silently slow)."""
    calls = []
    real = C.reference
    monkeypatch.setattr(CV, "reference", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setattr(CV, "_TAIL_ROWS", 0)
    C.parity_batch(DATA["hard"] + DATA["random128"], 256)
    assert calls == []
    C.parity_batch([27] * 100, 256, max_steps=100)
    assert len(calls) == 100


@pytest.mark.parametrize("tail", [0, 64])
def test_parity_batch_huge_numbers(monkeypatch, tail):
    """Thousands of bits: the limb width grows with the values, and past the float range of
    the sigma estimate (~2000 bits) the exact Python path takes over."""
    monkeypatch.setattr(CV, "_TAIL_ROWS", tail)
    rng = random.Random(5)
    ns = [2 ** 1500 + 1, 3 ** 900, 2 ** 1990 - 1, rng.getrandbits(1800) | 1, 2 ** 1499 * 27]
    assert_same(C.parity_batch(ns, 512), C.reference_batch(ns, 512))
    ns = [2 ** 2500 + 1, 3 ** 1200]
    assert_same(C.parity_batch(ns, 64), C.reference_batch(ns, 64))


def test_reference_batch_bits_are_parity_vectors():
    ns = [6, 27, 2 ** 70 + 1]
    b = C.reference_batch(ns, 64)
    for i, n in enumerate(ns):
        pv = C.reference(n).parity_vector
        assert "".join(map(str, b.bits[i, :b.lengths[i]])) == pv[:64]
        assert not b.bits[i, b.lengths[i]:].any()
    assert b.truncated.tolist() == [False, True, True] and b.lengths.tolist()[0] == 8


def test_truncation_flags_mixed():
    b = C.parity_batch(list(range(2, 200)), 100)
    assert b.truncated.any() and not b.truncated.all()


def test_empty_and_zero_len():
    b = C.parity_batch([], 8)
    assert len(b) == 0 and b.bits.shape == (0, 8)
    assert_same(C.parity_batch([5, 6], 0), C.reference_batch([5, 6], 0))


# ---------------------------------------------------------------- sampling

def _is_special(n):
    if (n + 1) & n == 0 or ((n - 1) & (n - 2) == 0):
        return True
    return (n >> ((n & -n).bit_length() - 1)) in C.DELAY_RECORDS


def test_sampling_pure_function_of_index():
    idx = [5, 0, 123456, 77, 3, 10 ** 12]
    together = C.sample_numbers(9, idx)
    assert together == [C.sample_numbers(9, [i])[0] for i in idx]
    assert C.sample_numbers(9, idx[::-1]) == together[::-1]
    assert C.sample_numbers(9, np.array(idx)) == together
    assert C.stream_batch(9, 3, 64) == C.sample_numbers(9, range(192, 256))
    assert C.stream_batch(9, 1, 128)[64:] == C.stream_batch(9, 3, 64)


def test_sampling_same_in_another_process():
    code = ("from lm_lightning.collatz import stream_batch; "
            "print(stream_batch(11, 2, 50, hard_fraction=0.7))")
    env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == C.stream_batch(11, 2, 50, hard_fraction=0.7)


def test_sampling_seeds_differ():
    assert C.stream_batch(0, 0, 64, hard_fraction=1.0) != C.stream_batch(1, 0, 64, hard_fraction=1.0)
    a, b = C.stream_batch(0, 0, 400), C.stream_batch(1, 0, 400)
    assert sum(x != y for x, y in zip(a, b)) > 100   # different hard/normal choices


def test_sampling_hard_mode():
    ns = C.sample_numbers(2, range(4000), hard_fraction=1.0)
    assert all(n > 2 ** 68 and 69 <= n.bit_length() <= 100 for n in ns)
    special = sum(map(_is_special, ns)) / len(ns)
    assert 0.21 < special < 0.29
    assert {n.bit_length() for n in ns if not _is_special(n)} == set(range(69, 101))
    assert any(n == 2 ** n.bit_length() - 1 for n in ns)
    assert any(n - 1 == 2 ** (n.bit_length() - 1) for n in ns)
    assert any((n >> ((n & -n).bit_length() - 1)) == 837799 for n in ns)


@pytest.mark.parametrize("frac", [0.0, 0.3, 1.0])
def test_sampling_hard_fraction(frac):
    ns = C.sample_numbers(5, range(4000), hard_fraction=frac, normal_start=1000)
    hard = sum(n > 2 ** 68 for n in ns) / len(ns)
    assert abs(hard - frac) < 0.03
    assert all(n == 1000 + i for i, n in enumerate(ns) if n <= 2 ** 68)


@pytest.mark.parametrize("frac", [0.0, 0.5])
def test_no_duplicates_across_workers_and_ranks(frac):
    """2 ranks x 2 workers draw disjoint batch indices of one stream."""
    ranks, workers, bs = 2, 2, 32
    drawn = {}
    for r in range(ranks):
        for w in range(workers):
            batches = range(r * workers + w, 64, ranks * workers)
            drawn[r, w] = [n for bi in batches for n in C.stream_batch(7, bi, bs, hard_fraction=frac)]
    everything = [n for v in drawn.values() for n in v]
    assert len(everything) == 64 * bs
    dupes = [n for n in set(everything) if everything.count(n) > 1]
    assert all(_is_special(n) for n in dupes)   # only the few fixed patterns can recur
    if frac == 0.0:
        assert sorted(everything) == [2 ** 20 + i for i in range(64 * bs)]


# ---------------------------------------------------------------- CLI and import hygiene

def test_cli_main(capsys):
    assert collatz_cli.main(["27"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    xs = naive(27)
    assert json.loads(out[0]) == {"n": 27, "total_stopping_time": 111, "stopping_time": 96,
                                  "max_value": 9232,
                                  "parity_vector": "".join(str(x % 2) for x in xs[:-1])}
    big = 2 ** 100 + 7
    assert collatz_cli.main(["6", str(big)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["parity_vector"] == "01010000" and lines[1]["n"] == big
    assert lines[1]["max_value"] == C.reference(big).max_value


@pytest.mark.parametrize("argv", [["abc"], ["1"], ["-5"], ["2.5"], ["27", "x"], []])
def test_cli_bad_input(capsys, argv):
    assert collatz_cli.main(argv) == 2
    cap = capsys.readouterr()
    assert cap.out == ""
    assert len(cap.err.strip().splitlines()) == 1 and cap.err.startswith("error: ")


def test_cli_subprocess():
    env = {**os.environ, "PYTHONPATH": str(SRC)}

    def run(*args):
        return subprocess.run([sys.executable, "-m", "lm_lightning.collatz", *args], env=env,
                              capture_output=True, text=True)

    ok = run("27", "97")
    assert ok.returncode == 0, ok.stderr
    assert [json.loads(line)["total_stopping_time"] for line in ok.stdout.splitlines()] == [111, 118]
    bad = run("0")
    assert bad.returncode == 2 and bad.stderr.startswith("error: ")
    assert "Traceback" not in bad.stderr


def test_module_imports_only_stdlib_and_numpy():
    names = set()
    # What DataLoader workers import: every module of the package but __main__ (the command); they may import each other.
    for path in sorted(set((SRC / "lm_lightning" / "collatz").glob("*.py")) - {SRC / "lm_lightning" / "collatz" / "__main__.py"}):
        for node in ast.parse(path.read_text()).body:   # top level only: lazy imports would be fine
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.module.startswith("lm_lightning.collatz"):
                names.add(node.module.split(".")[0])
    assert names - {"numpy"} <= set(sys.stdlib_module_names) | {"__future__"}
