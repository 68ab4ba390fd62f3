# Emulates the pair coverage of cuda/attention_backward_mma.cu: the dK/dV kernel's chunk walk (seek, the
# 'full' shortcut, the per-pair test) and the dQ kernel's tile walk, against the pairs of math/masks.h's
# key_range: every in-range (row, key) pair exactly once, no other (causal, windows, key_lengths, Sq != Sk).
# Run by .ci/run (CUDA emulation stage) and by hand: python3 tests/cuda_emu/backward_mma_ranges.py (not collected by pytest).
import itertools, random
def key_range(i, sq, sk, causal, wl, wr, kv):
    pos = i + (sk - sq); lo = 0; hi = kv if kv < sk else sk
    if causal and pos + 1 < hi: hi = pos + 1
    if wr >= 0 and pos + wr + 1 < hi: hi = pos + wr + 1
    if wl >= 0 and pos - wl > lo: lo = pos - wl
    if hi < lo: hi = lo
    return lo, hi
def want(sq, sk, c, wl, wr, kv):
    s = set()
    for i in range(sq):
        lo, hi = key_range(i, sq, sk, c, wl, wr, kv)
        for j in range(lo, hi): s.add((i, j))
    return s
def dkdv(sq, sk, c, wl, wr, kv, QC, BK=64):
    kend = min(kv, sk); got = {}
    for j0 in range(0, sk, BK):
        jn = max(0, min(BK, kend - j0))
        def seek(i0):
            while i0 < sq:
                n = min(QC, sq - i0)
                f = key_range(i0, sq, sk, c, wl, wr, kv); l = key_range(i0 + n - 1, sq, sk, c, wl, wr, kv)
                if not (l[1] <= j0 or f[0] >= j0 + jn or l[1] <= f[0]): return i0
                i0 += QC
            return None
        i0 = seek(0) if jn > 0 else None
        while i0 is not None:
            n = min(QC, sq - i0)
            f = key_range(i0, sq, sk, c, wl, wr, kv); l = key_range(i0 + n - 1, sq, sk, c, wl, wr, kv)
            full = n == QC and jn == BK and l[0] <= j0 and j0 + BK <= f[1]
            for r in range(QC):
                i = i0 + r
                lo, hi = key_range(i, sq, sk, c, wl, wr, kv) if i < sq else (0, 0)
                for w in range(BK):
                    j = j0 + w
                    inn = full or (r < n and j < kend and lo <= j < hi)
                    if inn:
                        assert (i, j) not in got; got[(i, j)] = 1
            i0 = seek(i0 + QC)
    return set(got)
def dq(sq, sk, c, wl, wr, kv, BQ=64, BK=64):
    kend = min(kv, sk); got = set()
    for i0 in range(0, sq, BQ):
        n = min(BQ, sq - i0)
        f = key_range(i0, sq, sk, c, wl, wr, kv); l = key_range(i0 + n - 1, sq, sk, c, wl, wr, kv)
        lo = max(0, f[0]); hi = min(kend, l[1]); flo = l[0]; fhi = min(f[1], kend) if n == BQ else -1
        j0 = lo // BK * BK
        while j0 < hi:
            full = flo <= j0 and j0 + BK <= fhi
            for r in range(BQ):
                i = i0 + r
                rl, rh = key_range(i, sq, sk, c, wl, wr, kv) if i < sq else (0, 0)
                for w in range(BK):
                    j = j0 + w
                    if full or (j < kend and rl <= j < rh):
                        assert (i, j) not in got; got.add((i, j))
            j0 += BK
    return got
random.seed(1); n = 0
for sq, sk in [(1, 65), (16, 300), (64, 64), (97, 160), (130, 200), (200, 77), (150, 150), (40, 50), (129, 129), (33, 90)]:
    for c in (False, True):
        for wl, wr in [(-1, -1), (30, 5), (-1, 0), (70, -1), (0, 0), (100, 0)]:
            for kv in (sk, 0, 1, 63, sk // 2 + 1, sk + 5):
                w = want(sq, sk, c, wl, wr, kv)
                for QC in (16, 32, 64):
                    assert dkdv(sq, sk, c, wl, wr, kv, QC) == w, (sq, sk, c, wl, wr, kv, QC)
                assert dq(sq, sk, c, wl, wr, kv) == w, (sq, sk, c, wl, wr, kv)
                n += 1
print("ok", n)
