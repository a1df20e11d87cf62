"""Collatz (3x+1) trajectories: an exact pure-Python reference and a vectorized numpy engine.

Used inside DataLoader workers and as a CLI, so it imports only stdlib + numpy.

The vectorized engine works with the shortcut map T(x) = (3x+1)/2 (x odd) | x/2 (x even).
For x = q*2^s + b (b < 2^s), s steps of T give T^s(x) = 3^a(b) * q + T^s(b), where a(b) is
the number of odd steps; a(b), T^s(b) and the resulting standard-map parity bits (an odd T step
is the two standard steps '1','0') are tabulated for all b, so one round of ~20 numpy calls
advances every number by up to K = 16 T-steps (~26 standard steps).  Numbers are held as
fixed-width rows of 32-bit limbs (stored in uint64 so limb * 3^16 + carry cannot wrap).
Exactness at block boundaries:
  * value 1 inside a block: T^j(x) >= x >> j >= 2 for j < s unless x < 2^s, in which case
    x == b and the table's "first hit of 1" entry is exact; x == 2^s reaches 1 at the endpoint.
  * first drop below n (sigma): while sigma is unknown a row uses s = bitlen(x) - bitlen(n) - 1
    (so every intermediate value >= x >> s > n) or single steps whose endpoint is compared exactly.
Rows that hit the step cap or overflow the limb width are recomputed with reference(), which
also detects cycles, so anomalies are reported rather than truncated or dropped.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

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


def reference(n: int, max_steps: int = 100_000,
              step_fn: Callable[[int], int] = collatz_step) -> CollatzResult:
    """Ground truth: one big-int step at a time. `step_fn` is injectable so the cycle
    detector can be tested on maps that do have non-trivial cycles (e.g. 3x-1)."""
    n = _check_n(n)
    x, steps, sigma, mx = n, 0, -1, n
    bits, seen, anomaly = [], set(), ANOMALY_NONE
    while x != 1:
        if steps >= max_steps:
            anomaly = ANOMALY_STEP_CAP
            break
        if x in seen:  # only reachable through a cycle that avoids 1
            anomaly = ANOMALY_CYCLE
            break
        seen.add(x)
        bits.append("1" if x & 1 else "0")
        x = step_fn(x)
        steps += 1
        if x > mx:
            mx = x
        if sigma < 0 and x < n:
            sigma = steps
    return CollatzResult(n, steps, sigma, mx, "".join(bits), anomaly)


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


def _finish_batch(bits, tst, sigma, anomaly, max_len) -> ParityBatch:
    lengths = np.minimum(tst, max_len)
    bits &= np.arange(max_len) < lengths[:, None]     # (B, max_len): zero after the end
    return ParityBatch(bits, lengths, tst, sigma, tst > max_len, anomaly)


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
    return _finish_batch(bits, tst, sigma, anomaly, max_len)


_MASK, _ONE, _32, _63 = np.uint64(0xFFFFFFFF), np.uint64(1), np.uint64(32), np.uint64(63)
_K = 16        # largest block, in T-steps: a limb (< 2^33) times 3^16 stays below 2^64
_EPS = 1e-9    # relative float error budget of the sigma estimate (actual error < 1e-14)


class _Tables:
    """Effect of s T-steps on x = q*2^s + b, for every s in 1..K and b < 2^s, at row 2^s - 1 + b:
    mul = 3^a, add = T^s(b), length = standard steps, hit1 = standard steps until b first
    reaches 1 (-1: not within s), pack = the standard parity bits, bit i = step i.
    For s = K only, per prefix j = 1..K (column j-1): T^j(x) = rho*x + e exactly
    (rho = 3^a_j / 2^j, e >= 0), and plen = standard steps of the first j T-steps."""

    def __init__(self, K: int):
        size = 2 ** (K + 1) - 1
        self.mul, self.add = np.zeros(size, np.uint64), np.zeros(size, np.uint64)
        self.length, self.hit1 = np.zeros(size, np.int64), np.zeros(size, np.int64)
        self.pack = np.zeros(size, np.uint64)
        for s in range(1, K + 1):
            b = np.arange(2 ** s, dtype=np.int64)
            v, a, ln, pack = b.copy(), np.zeros_like(b), np.zeros_like(b), np.zeros_like(b)
            hit = np.full_like(b, -1)
            rho, e, plen = (np.zeros((2 ** s, s)) for _ in range(3))  # (2^s, s)
            for j in range(s):
                odd = v & 1
                pack |= odd << ln                # an odd T-step is standard '1' then '0'
                ln += 1 + odd
                a += odd
                v = np.where(odd == 1, (3 * v + 1) // 2, v // 2)
                hit = np.where((hit < 0) & (v == 1), ln, hit)
                rho[:, j] = 3.0 ** a / 2.0 ** (j + 1)
                e[:, j] = v - rho[:, j] * b      # exact in float64: all terms < 2^53
                plen[:, j] = ln
            sl = slice(2 ** s - 1, 2 ** (s + 1) - 1)
            self.mul[sl], self.add[sl], self.length[sl] = 3 ** a, v, ln
            self.hit1[sl], self.pack[sl] = hit, pack
            self.hit1[2 ** s] = 0              # b == 1 with x == 1: already there
        self.rho, self.e, self.plen = rho, e, plen.astype(np.int64)
        for name in ("mul", "add", "length", "hit1", "pack"):   # Python-int copies
            setattr(self, name + "_l", getattr(self, name).tolist())


@lru_cache(maxsize=None)
def _tables(K: int = _K) -> _Tables:
    return _Tables(K)


def _limbs_to_int(col) -> int:
    return sum(int(v) << (32 * i) for i, v in enumerate(col))


_TAIL_ROWS = 64   # below this many live rows, numpy call overhead beats the work: finish in Python


def _finish_scalar(x: int, n: int, steps: int, unres: bool, max_len: int, max_steps: int):
    """The same block recurrence as the numpy loop, for one straggler in Python ints.
    Returns (total, sigma or -1 if found earlier, packed bits from `steps` on), or None when
    the row must go to reference() (step cap)."""
    T, K = _tables(), _K
    mask, mul, add, length, hit1, pack = (1 << K) - 1, T.mul_l, T.add_l, T.length_l, T.hit1_l, T.pack_l
    sigma, acc = -1, 0
    while unres:       # exact comparisons with n are cheap here
        if steps >= max_steps:
            return None
        if (x >> K) < n:   # a drop below n may happen inside a block: one T-step
            i = 1 + (x & 1)
            x = (x >> 1) * mul[i] + add[i]
        else:              # every value inside the block is >= x >> K >= n
            i = mask + (x & mask)
            x = (x >> K) * mul[i] + add[i]
        if steps < max_len:
            acc |= pack[i] << steps
        steps += length[i]
        if x < n:
            sigma, unres = steps, False
    while steps < max_steps:
        i, q = mask + (x & mask), x >> K
        if not q and hit1[i] >= 0:    # x < 2^K reaches 1 inside this block (or x == 1)
            if steps < max_len:
                acc |= pack[i] << steps
            total = steps + hit1[i]
            return (total, sigma, acc) if total <= max_steps else None
        if steps < max_len:
            acc |= pack[i] << steps
        steps += length[i]
        x = q * mul[i] + add[i]
    return None


def parity_batch(ns: Sequence[int], max_len: int, max_steps: int = 100_000) -> ParityBatch:
    """Vectorized equivalent of reference_batch (bit-exact, all fields).  Numbers are columns
    of a limb-major (lw, A) array, so per-limb operations and reductions over limbs are single
    contiguous numpy calls; lw (the active limb width, guard limb included) follows the
    largest live value, and finished rows are compacted away."""
    ns = list(ns)
    if set(map(type, ns)) - {int} or (ns and min(ns) < 2):
        ns = [_check_n(n) for n in ns]
    B, K, T = len(ns), _K, _tables()
    nwords = (max_len + 2 * K) // 64 + 2
    acc = np.zeros((B, nwords), np.uint64)               # packed parity bits, bit i = step i
    accf = acc.reshape(-1)
    tst, sigma = np.full(B, -1, np.int64), np.full(B, -1, np.int64)
    anomaly = np.zeros(B, np.int8)
    nbits = max(ns, default=2).bit_length()
    # Capacity: excursions above n rarely exceed 0.6*bitlen(n) + 64 bits (+1 guard limb).
    lw, cap = nbits // 32 + 2, (nbits * 8 // 5 + 64) // 32 + 2
    x = np.ascontiguousarray(np.frombuffer(b"".join([n.to_bytes(4 * lw, "little") for n in ns]),
                                           "<u4").reshape(B, lw).T, np.uint64)  # (lw, A)
    scale = max(0, 32 * cap - 960)                       # keep float estimates finite
    w = 2.0 ** (32 * np.arange(cap) - scale)             # (cap,) limb weights
    nf = w[:lw] @ x                                      # (A,) float n
    rows, steps = np.arange(B), np.zeros(B, np.int64)    # (A,) batch row, steps done
    unres = np.ones(B, bool)                             # (A,) sigma not found yet
    fallback, recording = [], max_len > 0
    while len(rows) > _TAIL_ROWS:
        b = (x[0] & np.uint64(2 ** K - 1)).astype(np.int64)   # (A,) low K bits
        s, idx, exact = K, b + (2 ** K - 1), ()
        if unres.any():
            # T^j(x) = rho_j*x + e_j for j = 1..K, estimated in float: a sure drop below n
            # resolves sigma now; an unclear one ends the block just before that step, and
            # that step is then taken alone and compared exactly.
            u = np.flatnonzero(unres)
            xf = w[:len(x)] @ x[:, u].astype(np.float64)
            near = xf <= nf[u] * (2.0 ** K * (1 + 2 * _EPS))   # T^j(x) >= x / 2^K
            u, xf = u[near], xf[near]
            bu, nu, ar = b[u], nf[u], np.arange(len(u))
            est = xf[:, None] * T.rho[bu] + T.e[bu] * 2.0 ** -scale   # (U, K)
            maybe = est <= (nu * (1 + _EPS))[:, None]
            jd = maybe.argmax(1)
            hasm = maybe[ar, jd]
            sure = hasm & (est[ar, jd] < nu * (1 - _EPS))
            sigma[rows[u[sure]]] = steps[u[sure]] + T.plen[bu[sure], jd[sure]]
            unres[u[sure]] = False
            amb = hasm & ~sure
            if amb.any():
                s = np.full(len(rows), K)
                s[u[amb]] = np.maximum(jd[amb], 1)
                idx = (1 << s) - 1 + (b & ((1 << s) - 1))
                exact, s = u[amb][jd[amb] == 0], s.astype(np.uint64)
        # x <- 3^a * (x >> s) + T^s(b). Limbs may be up to 2^32 + 2^27 (one carry pass per
        # block), so the shift adds the low s bits of the next limb instead of or-ing them.
        y = x >> s
        y[:-1] += (x[1:] & ((_ONE << s) - _ONE)) << (_32 - s)
        xprev, x = x, y * T.mul[idx]
        x[0] += T.add[idx]
        hi = x >> _32
        x &= _MASK
        x[1:] += hi[:-1]
        if recording:    # OR the block's bits into the packed buffer at bit offset `steps`
            rec = np.flatnonzero(steps < max_len)
            recording = len(rec) > 0
            p, v = steps[rec], T.pack[idx[rec]]
            sh = (p & 63).astype(np.uint64)
            word = rows[rec] * nwords + (p >> 6)                 # into acc.reshape(-1)
            accf[word] |= v << sh
            accf[word + 1] |= (v >> _ONE) >> (_63 - sh)          # v >> (64 - sh), sh may be 0
        new_steps = steps + T.length[idx]
        for i in exact:   # rare: T(x) within float error of n; compare exactly
            if unres[i] and _limbs_to_int(x[:, i]) < ns[rows[i]]:
                sigma[rows[i]], unres[i] = new_steps[i], False
        # Reaching 1: only possible when x < 2^s (then x == b and the table is exact) or at the
        # block end when x == 2^s; the latter is caught next block, where b == 1 has hit1 == 0.
        h = T.hit1[idx]
        cand = np.flatnonzero(h >= 0)
        done, total = np.zeros(len(rows), bool), new_steps
        if len(cand):
            hit = cand[np.bitwise_or.reduce(y[:, cand], axis=0) == 0]
            done[hit] = True
            total = new_steps.copy()
            total[hit] = steps[hit] + h[hit]
        steps = new_steps
        bad = np.zeros(len(rows), bool)
        if x[-1].any():   # the guard limb is in use: widen, or overflow at capacity
            if len(x) < cap:
                x = np.vstack([x, np.zeros((1, x.shape[1]), np.uint64)])
            else:
                bad = x[-1] != 0
        elif len(x) > 2 and not x[-2].any():
            x = x[:-1]
        if steps.max() >= max_steps:
            bad |= np.where(done, total > max_steps, steps >= max_steps)
        finished = done | bad
        if finished.any():
            ok = done & ~bad
            tst[rows[ok]] = total[ok]
            fallback.extend(rows[bad].tolist())
            keep = ~finished
            x, rows, steps, unres, nf = x[:, keep], rows[keep], steps[keep], unres[keep], nf[keep]
    for j, r in enumerate(rows.tolist()):   # stragglers
        res = _finish_scalar(_limbs_to_int(x[:, j]), ns[r], int(steps[j]), bool(unres[j]),
                             max_len, max_steps)
        if res is None:
            fallback.append(r)
            continue
        tst[r] = res[0]
        if res[1] >= 0:
            sigma[r] = res[1]
        acc[r] |= np.frombuffer(res[2].to_bytes(8 * nwords, "little"), "<u8")
    bits = np.unpackbits(acc.astype("<u8", copy=False).view(np.uint8), axis=1, count=max_len,
                         bitorder="little")
    for i in fallback:   # step cap or limb overflow: the exact big-int path
        _fill_from_reference(reference(ns[i], max_steps), i, bits, tst, sigma, anomaly, max_len)
    return _finish_batch(bits, tst, sigma, anomaly, max_len)


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
    """Sample i of the stream depends only on (seed, i) and the keyword settings.
    Normal: n = normal_start + i (disjoint index sets -> distinct n).  Hard (probability
    hard_fraction): 75% random n with bit length uniform in hard_bits, 25% special patterns
    2^k - 1, 2^k + 1, delay record * 2^j (all >= 2^(hard_bits[0] - 1))."""
    lo, hi = hard_bits
    if not (2 <= lo <= hi) or not 0.0 <= hard_fraction <= 1.0 or normal_start < 2:
        raise ValueError("need 2 <= hard_bits[0] <= hard_bits[1], 0 <= hard_fraction <= 1, "
                         "normal_start >= 2")
    idx_list = [int(i) for i in indices]
    if any(i < 0 for i in idx_list):
        raise ValueError("indices must be >= 0")
    idx = np.array(idx_list, np.uint64)
    nrand = -(-hi // 64)
    w = _words(seed, idx, 5 + nrand)
    u = (w[:, :2] >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # (N, 2) uniforms in [0,1)
    out = []
    for i, hard, u_special, row in zip(idx_list, (u[:, 0] < hard_fraction).tolist(),
                                       u[:, 1].tolist(), w.tolist()):
        if not hard:
            out.append(normal_start + i)
            continue
        kind, p1, p2 = row[2] % 3, row[3], row[4]
        if u_special >= 0.25:
            bl = lo + p1 % (hi - lo + 1)
            r = sum(v << (64 * j) for j, v in enumerate(row[5:]))
            out.append((r & ((1 << (bl - 1)) - 1)) | (1 << (bl - 1)))
        elif kind < 2:
            out.append((1 << (lo + p1 % (hi - lo + 1))) + (1 if kind else -1))
        else:
            rec = DELAY_RECORDS[p1 % len(DELAY_RECORDS)]
            jlo = max(0, lo - rec.bit_length())
            jhi = max(jlo, hi - rec.bit_length())
            out.append(rec << (jlo + p2 % (jhi - jlo + 1)))
    return out


def stream_batch(seed: int, batch_index: int, batch_size: int, **kw) -> list:
    return sample_numbers(seed, range(batch_index * batch_size, (batch_index + 1) * batch_size),
                          **kw)


def main(argv=None) -> int:
    """`python -m lm_lightning.collatz N [N ...]`: one JSON object per number per line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m lm_lightning.collatz N [N ...]   (integers >= 2)",
              file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    try:
        ns = []
        for a in argv:
            try:
                ns.append(_check_n(int(a)))
            except ValueError as e:
                raise ValueError(f"invalid number {a!r}: {e}" if "n must" in str(e)
                                 else f"invalid number {a!r} (expected an integer >= 2)") from None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for n in ns:
        print(json.dumps(reference(n).to_json()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
