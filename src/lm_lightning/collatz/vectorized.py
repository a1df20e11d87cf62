"""The vectorized Collatz engine: :func:`parity_batch`, the same output as
:func:`~lm_lightning.collatz.reference.reference_batch` for a whole batch at once.

The engine runs the shortcut map T(x) = (3x+1)/2 (x odd) | x/2 (even);
an odd T-step is the two standard steps '1', '0'.  For x = q*2^s + b with b < 2^s,
T^s(x) = 3^a(b) * q + T^s(b) (a = number of odd steps), so tables over b advance the whole
batch by a block of up to K = 16 T-steps (~26 standard steps) per round of numpy calls.
Numbers are columns of 32-bit limbs held in int64 (limb * 3^16 + carries < 2^63): exact at
any size.  Block boundaries are handled exactly:
  * reaching 1 inside a block needs x < 2^s, where x == b and a table entry says when;
    reaching it at a block end needs x == 2^s, seen by the next block as x == 1.
  * sigma (first value < n): T^j(x) = x * 3^a_j / 2^j + e_j with tabulated e_j >= 0 is
    estimated in float for every prefix j; a clear drop is resolved from the tables, and a
    step too close to call (within 1e-9 relative) is taken alone and compared exactly.
Late stragglers finish in a Python-int version of the same recurrence.  Rows that hit the
step cap or outgrow the limb capacity are redone by reference(), which also detects cycles,
so anomalies are reported, never truncated or dropped.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np

from lm_lightning.collatz.reference import (
    ParityBatch,
    _check_n,
    _fill_from_reference,
    _make_batch,
    reference,
)

_K = 16        # block size in T-steps: a limb (< 2^34) times 3^16 stays below 2^63 (int64)
_EPS = 1e-9    # relative error budget of the float sigma estimate (actual error < 1e-14)
_TAIL_ROWS = 64  # with fewer live rows numpy call overhead dominates: finish them in Python


class _Tables:
    """Effect of s T-steps on x = q*2^s + b, for every s in 1..K and b < 2^s, at index
    2^s - 1 + b: mul = 3^a, add = T^s(b), length = standard steps, hit1 = standard steps until
    b first reaches 1 (-1: not within s; 0 for b == 1, i.e. x == 1), pack = the standard parity
    bits (bit i = standard step i).  For s = K and each prefix j = 1..K (column j-1): apre = a_j
    and e = T^j(b) - 3^a_j * b / 2^j, so that T^j(x) = x * 3^a_j / 2^j + e exactly (e >= 0).
    All sections come from one K-step run over b < 2^K (b < 2^s is its own s-step prefix)."""

    def __init__(self, K: int):
        b = np.arange(2 ** K, dtype=np.int64)
        v, a, ln, pack, hit = b.copy(), 0 * b, 0 * b, 0 * b, 0 * b - 1
        cols = {k: np.zeros((2 ** K, K), np.int64) for k in ("a", "v", "ln", "hit", "pack")}
        self.e = np.zeros((2 ** K, K))                          # (2^K, K) float64
        for j in range(K):
            odd = v & 1
            pack |= odd << ln
            ln, a = ln + 1 + odd, a + odd
            v = np.where(odd == 1, (3 * v + 1) // 2, v // 2)
            hit = np.where((hit < 0) & (v == 1), ln, hit)
            for k, arr in (("a", a), ("v", v), ("ln", ln), ("hit", hit), ("pack", pack)):
                cols[k][:, j] = arr
            self.e[:, j] = v - 3.0 ** a / 2.0 ** (j + 1) * b   # exact: all terms < 2^53
        self.apre = cols["a"].astype(np.int8)                  # (2^K, K)
        sec = {k: np.concatenate([[-1 if k == "hit" else 0]]   # column 0 unused
                                 + [c[:2 ** s, s - 1] for s in range(1, K + 1)])
               for k, c in cols.items()}
        sec["hit"][2 ** np.arange(1, K + 1)] = 0               # b == 1 in every section
        # int64 like the limbs and steps: mixed dtypes would add a cast to every use
        self.mul, self.add, self.length, self.hit1 = 3 ** sec["a"], sec["v"], sec["ln"], sec["hit"]
        self.pack = sec["pack"].astype(np.uint64)
        self.pow3, self.inv2 = 3.0 ** np.arange(K + 1), 2.0 ** -np.arange(1, K + 1)
        # Python lists for the scalar path: s = 1 at 1 + bit, s = K at 3 + b.
        self.lists = [t[:3].tolist() + t[2 ** K - 1:].tolist()
                      for t in (self.mul, self.add, self.length, self.hit1, self.pack)]


@cache
def _tables(K: int = _K) -> _Tables:
    return _Tables(K)


def _limbs_to_int(col) -> int:
    return sum(int(v) << (32 * i) for i, v in enumerate(col))


def _finish_scalar(x: int, n: int, steps: int, unres: bool, max_len: int, max_steps: int):
    """The same block recurrence as the numpy loop, for one straggler in Python ints.
    Returns (total, sigma or -1 if found earlier, packed bits from `steps` on), or None when
    the row must go to reference() (step cap)."""
    K, mask = _K, (1 << _K) - 1
    mul, add, length, hit1, pack = _tables().lists
    sigma, acc = -1, 0
    while unres:       # exact comparisons with n are cheap here
        if steps >= max_steps:
            return None
        if (x >> K) < n:   # a drop below n may happen inside a block: one T-step
            i = 1 + (x & 1)
            x = (x >> 1) * mul[i] + add[i]
        else:              # every value inside the block is >= x >> K >= n
            i = 3 + (x & mask)
            x = (x >> K) * mul[i] + add[i]
        if steps < max_len:
            acc |= pack[i] << steps
        steps += length[i]
        if x < n:
            sigma, unres = steps, False
    while steps < max_steps:
        i, q = 3 + (x & mask), x >> K
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
    of a limb-major (lw, A) int64 array of 32-bit limbs, so each limb operation or reduction
    over limbs is one contiguous numpy call; lw (the active width, guard limb included) follows
    the largest live value, and finished rows are compacted away."""
    ns = list(ns)
    if set(map(type, ns)) - {int} or (ns and min(ns) < 2):
        ns = [_check_n(n) for n in ns]
    B, K, T = len(ns), _K, _tables()
    nwords = (max_len + 2 * K) // 64 + 2
    acc = np.zeros((B, nwords), np.uint64)             # packed parity bits, bit i = step i
    accf = acc.reshape(-1)
    tst, sigma = np.full(B, -1, np.int64), np.full(B, -1, np.int64)
    anomaly = np.zeros(B, np.int8)
    nbits = max(ns, default=2).bit_length()
    # Capacity: excursions above n rarely exceed 0.6*bitlen(n) + 64 bits (+1 guard limb).
    lw, cap = nbits // 32 + 2, (nbits * 8 // 5 + 64) // 32 + 2
    x = np.frombuffer(b"".join([n.to_bytes(4 * lw, "little") for n in ns]), "<u4")
    x = np.ascontiguousarray(x.reshape(B, lw).T, np.int64)   # (lw, A)
    scale = max(0, 32 * cap - 1000)                    # scaled floats stay below 2^1000
    w, escale = 2.0 ** (32 * np.arange(cap) - scale), 2.0 ** -scale  # (cap,) limb weights
    nf = w[:lw] @ x                                    # (A,) float n
    rows, steps = np.arange(B), np.zeros(B, np.int64)  # (A,) batch row, steps done
    unres = np.ones(B, bool)                           # (A,) sigma not found yet
    fallback, recording, idle, max_done = [], max_len > 0, 0, 0
    # Over ~2000 bits the float range cannot hold both n and the capacity: Python path only.
    while len(rows) > (_TAIL_ROWS if nbits <= 2000 else B):
        b = x[0] & (2 ** K - 1)                        # (A,) low K bits
        s, idx, exact = K, b + (2 ** K - 1), ()
        if idle:
            idle -= 1
        elif unres.any():
            # T^j(x) = x * 3^a_j / 2^j + e_j for j = 1..K, estimated in float: a sure drop
            # below n resolves sigma now; an unclear one ends the block just before that step,
            # and that step is then taken alone and compared exactly.
            u = np.flatnonzero(unres)
            bu, nu = b[u], nf[u]
            xf = w[:len(x)] @ x[:, u].astype(np.float64)
            e = T.e[bu] if not scale else T.e[bu] * escale
            est = xf[:, None] * (T.pow3[T.apre[bu]] * T.inv2) + e                    # (U, K)
            maybe = est <= (nu * (1 + _EPS))[:, None]
            if not maybe.any():   # T^j(x) >= x / 2^j: x > n * 2^(K*m) cannot drop for m blocks
                bits_above = (np.log2(xf) - np.log2(nu)).min() - np.log2(1 + 2 * _EPS)
                idle = max(0, int(bits_above // K) - 1)
            else:
                ar, jd = np.arange(len(u)), maybe.argmax(1)
                hasm = maybe[ar, jd]
                sure = hasm & (est[ar, jd] < nu * (1 - _EPS))
                us, js = u[sure], jd[sure]             # standard steps of j T-steps: j + a_j
                sigma[rows[us]] = steps[us] + js + 1 + T.apre[bu[sure], js]
                unres[us] = False
                amb = hasm & ~sure
                if amb.any():
                    s = np.full(len(rows), K)
                    s[u[amb]] = np.maximum(jd[amb], 1)
                    idx = (1 << s) - 1 + (b & ((1 << s) - 1))
                    exact = u[amb][jd[amb] == 0]
        # x <- 3^a * (x >> s) + T^s(b). Limbs may reach 2^32 + 2^26 (one carry pass per block),
        # so the shift adds the low s bits of the next limb rather than or-ing them in.
        mul, add, length, hit1 = T.mul.take(idx), T.add.take(idx), T.length.take(idx), T.hit1.take(idx)
        y = x >> s
        y[:-1] += (x[1:] & ((1 << s) - 1)) << (32 - s)
        x = y * mul
        x[0] += add
        hi = x >> 32
        x &= 0xFFFFFFFF
        x[1:] += hi[:-1]
        if recording:    # OR the block's bits into the packed buffer at bit offset `steps`
            rec = np.flatnonzero(steps < max_len)
            recording = len(rec) > 0
            p, v = steps[rec], T.pack[idx[rec]]
            sh = (p & 63).astype(np.uint64)
            word = rows[rec] * nwords + (p >> 6)       # into acc.reshape(-1)
            accf[word] |= v << sh
            accf[word + 1] |= (v >> np.uint64(1)) >> (np.uint64(63) - sh)  # v >> (64 - sh)
        new_steps = steps + length
        for i in exact:   # rare: T(x) within float error of n; compare exactly
            if _limbs_to_int(x[:, i]) < ns[rows[i]]:
                sigma[rows[i]], unres[i] = new_steps[i], False
        # Reaching 1: only when x < 2^s (then x == b and the table is exact), or at the block
        # end when x == 2^s, which the next block sees as b == 1 with hit1 == 0.
        done, total = None, new_steps
        if hit1.max() >= 0:
            cand = np.flatnonzero(hit1 >= 0)
            hit = cand[np.bitwise_or.reduce(y[:, cand], axis=0) == 0]
            if len(hit):
                done = np.zeros(len(rows), bool)
                done[hit] = True
                total = new_steps.copy()
                total[hit] = steps[hit] + hit1[hit]
        steps, max_done = new_steps, max_done + 2 * K
        bad = None
        if x[-1].any():   # the guard limb is in use: widen, or overflow at capacity
            if len(x) < cap:
                x = np.vstack([x, np.zeros((1, x.shape[1]), np.int64)])
            else:
                bad = x[-1] != 0
        elif len(x) > 2 and not x[-2].any():
            x = x[:-1]
        if max_done >= max_steps and steps.max() >= max_steps:
            over = steps >= max_steps if done is None else np.where(done, total > max_steps,
                                                                      steps >= max_steps)
            bad = over if bad is None else bad | over
        if done is not None or bad is not None:
            done = np.zeros(len(rows), bool) if done is None else done
            bad = np.zeros(len(rows), bool) if bad is None else bad
            ok = done & ~bad
            tst[rows[ok]] = total[ok]
            fallback.extend(rows[bad].tolist())
            keep = ~(done | bad)
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
    exact_rows = {r: reference(ns[r], max_steps) for r in fallback}  # step cap, limb overflow
    for r, res in exact_rows.items():
        tst[r] = res.total_stopping_time
    # Zero the bits past each row's end (a finishing block writes its full table entry).
    valid = np.clip(np.minimum(tst, max_len)[:, None] - 64 * np.arange(nwords), 0, 64)
    acc &= np.where(valid == 64, ~np.uint64(0),
                    (np.uint64(1) << np.minimum(valid, 63).astype(np.uint64)) - np.uint64(1))
    bits = np.unpackbits(acc.astype("<u8", copy=False).view(np.uint8), axis=1, count=max_len,
                         bitorder="little")
    for r, res in exact_rows.items():
        _fill_from_reference(res, r, bits, tst, sigma, anomaly, max_len)
    return _make_batch(bits, tst, sigma, anomaly, max_len)
