"""Host emulation of the three-pass DLA chunked prefill (cuda/dla_prefill_v4.cuh), checked against the CPU
backend (attnkit.dynamic_linear_attention): the decomposition of shared/specs/dla.md's step into

  pass A1 per (item, chunk), every chunk at once: the score table of every open state OPENED in the chunk (the A
          chain from B_s, the pair sums from the Gram terms), Suf[r][0] and B_r -- nothing carried in;
  pass A2 per item, over its chunks: the scores and boundaries from the OPEN state only (one state per item:
          the open state is never merged while it is open, spec invariant 7): the carried column (K S v,
          ||S||^2 and its A chain, by rounds of 8 rows up to the first row that opens a state) and lookups in
          A1's table, then that open state at the chunk's end;
  pass B  per item, over all T tokens: the merge chain from (boundary, score) per token and the entries'
          (count, info) only -- no state is read;
  pass C1 per (item, column slice), over its chunks: the states only -- the entry list replayed per chunk from
          pass B's per-token (boundary, merged pair), each entry's state at the chunk's end from the entries'
          states at its start and the chunk's tokens; keeps the states at EVERY chunk start (chs[n]);
  pass C2 per (item, chunk, column slice of its own split ns2), in any order (shuffled here): the chunk's
          readout from chs[n] and the replayed per-row entry lists, each column independent.

Each pass consumes only what the previous ones produced (arrays named below), in the kernels' order of the
operations that decide anything: p_r and A per chunk (A recomputed from the stored open state at every chunk
start, carried in double through the chunk by dla_joined_sq_norm), the score rounded to the state dtype
before the tau test and summed into info in that dtype, merges by math::dla_merge_pair's expression. The
values (Gram entries, states, outputs) are formed by NumPy products, so they agree with the CPU to rounding:
bit-equality with the CPU is not available (v2 is not bit-equal to it either: it forms the Gram entries and
k^T S v in double where the CPU uses float32, in other orders); decisions (boundaries, merges, counts,
starts, size) must be identical and values within 1e-10 (float64) / 1e-4 (float32, relative to 1 + |x|).
The CUDA kernels themselves are emulated in tests/cuda_emu/test_dla_v2.cpp (v4 against the CPU, v5 against v4 bit
for bit; until session 27 v4 against the v2 kernel bit for bit).

Run: python tests/cuda_emu/dla_v4_emu.py with attnkit importable (installed, or PYTHONPATH=python in a
development build); about 8 s; .ci/run's emulation stage
"""

import math
import sys

import numpy as np

import attnkit  # the installed package (its CPU backend is the reference here)
from attnkit._tuning import tuning

RMS_EPS = 1e-6
SCORE_EPS = 1e-6


def rms_scale(x, n):
    return 1.0 / math.sqrt(x / n + RMS_EPS)


def joined(A, B, p):
    x = A + 2.0 * p + B
    return x if x > 0 else 0.0


def info_score(drift, A, B, p, n):
    ra = rms_scale(A, n)
    den = ra * math.sqrt(A) + SCORE_EPS
    if drift:
        A2 = joined(A, B, p)
        rc = rms_scale(A2, n)
        num2 = rc * rc * A2 + ra * ra * A - 2.0 * ra * rc * (A + p)
    else:
        rb = rms_scale(B, n)
        num2 = rb * rb * B + ra * ra * A - 2.0 * ra * rb * p
    return math.sqrt(num2 if num2 > 0 else 0.0) / den


def opens_state(score, tau, C, m):
    if m == 0:
        return True
    if C == 1:
        return False
    return float(score) >= tau


def merge_pair(info, count):
    best, best_ratio = 0, 0.0
    for i in range(len(info) - 1):
        ratio = (float(info[i]) + float(info[i + 1])) / float(count[i] + count[i + 1])
        if i == 0 or ratio < best_ratio:
            best, best_ratio = i, ratio
    return best


def chunk_decay(g, t0, Lc):
    """G_r (cumulative log-decay in the chunk), e^{G_r}, a_r^2 and the pair factor function."""
    G = np.cumsum(g[t0:t0 + Lc].astype(np.float64))
    eG = np.exp(G)
    a2 = np.exp(2.0 * g[t0:t0 + Lc].astype(np.float64))
    factored = G[0] - G[-1] <= 600.0
    er, fj = np.exp(G - G[0]), np.exp(G[0] - G)

    def dec(r, j):
        return er[r] * fj[j] if factored else math.exp(G[r] - G[j])
    return G, eG, a2, dec


def chunk_kv(k, v, g, t0, Lc, R):
    """A chunk's K, V (dtype R) and decay factors eG, a2 and pair decay dec(r, j) (1 without a decay)."""
    K = k[t0:t0 + Lc].astype(R)
    V = v[t0:t0 + Lc].astype(R)
    if g is not None:
        _, eG, a2, dec = chunk_decay(g, t0, Lc)
    else:
        eG = np.ones(Lc)
        a2 = np.ones(Lc)
        dec = lambda r, j: 1.0  # noqa: E731
    return K, V, eG, a2, dec


def chunk_terms(k, v, g, t0, Lc, R):
    """A chunk's K, V (dtype R), decay factors, Gram pair terms KK_rj VV_rj e^{G_r-G_j} (double) and Bv_r."""
    K, V, eG, a2, dec = chunk_kv(k, v, g, t0, Lc, R)
    Kd, Vd = K.astype(np.float64), V.astype(np.float64)
    KK, VV = Kd @ Kd.T, Vd @ Vd.T  # the GPU forms both in double
    Bv = np.diag(KK) * np.diag(VV)
    return K, V, eG, a2, dec, KK, VV, Bv


def suffix(KK, VV, dec, r, lo):
    """sum_{lo <= j < r} dec(r, j) KK_rj VV_rj, v2's suffix sums: j from r-1 down."""
    pr = 0.0
    for j in range(r - 1, lo - 1, -1):
        pr += dec(r, j) * KK[r, j] * VV[r, j]
    return pr


def pass_a1(k, v, g, drift, L, R):
    """One item, every chunk independently (nothing depends on the state carried in): the score table of every
    open state opened at a chunk row s (tab[n][r, s], s < r, rounded to R: the A chain from Bv_s), Suf[r][0] (the
    pair sum over the chunk rows 0 .. r-1) and Bv_r."""
    T, Dk = k.shape
    n = float(Dk) * float(v.shape[1])
    out = []
    for t0 in range(0, T, L):
        Lc = min(L, T - t0)
        K, V, eG, a2, dec, KK, VV, Bv = chunk_terms(k, v, g, t0, Lc, R)
        tab = np.full((Lc, Lc), np.nan)
        for s in range(Lc):  # the A chain of the state opened at s (one GPU thread each)
            A_after = Bv[s]
            for r in range(s + 1, Lc):
                A = a2[r] * A_after
                pr = suffix(KK, VV, dec, r, s)
                tab[r, s] = R(info_score(drift, A, Bv[r], pr, n))
                A_after = joined(A, Bv[r], pr)
        suf0 = np.array([suffix(KK, VV, dec, r, 0) for r in range(Lc)])
        out.append((tab, suf0, Bv))
    return out


def pass_a(k, v, g, tau, C, drift, L, open_in, m_in, R, tables):
    """Pass A2, one item, serial over its chunks: consumes k, v, g, the open state carried in (or none) and
    pass A1's tables; only the carried column is computed here (K S v, ||S||^2, its A chain); produces I[t]
    (dtype R) and opens[t], and the open state after every chunk (kept in R, rebuilt as v2's step 6 does for
    the open entry: E * S + sum_j dec(L-1, j) k_j v_j^T, or the sum over its chunk tokens only)."""
    T, Dk = k.shape
    Dv = v.shape[1]
    n = float(Dk) * float(Dv)
    I = np.zeros(T, R)
    opens = np.zeros(T, bool)
    S = None if m_in == 0 else open_in.astype(R).copy()
    nonempty = m_in > 0
    for ci, t0 in enumerate(range(0, T, L)):
        Lc = min(L, T - t0)
        tab, suf0, Bv = tables[ci]
        K, V, eG, a2, dec = chunk_kv(k, v, g, t0, Lc, R)
        carried = S is not None
        Ac = np.zeros(Lc)
        if carried:  # the carried column by rounds of 8 rows (A2's kA2Rows), up to the first row it opens
            Kd, Vd = K.astype(np.float64), V.astype(np.float64)
            A_after = float(np.sum(S.astype(np.float64) ** 2))
            Ac[:] = np.nan  # rows past the stop are never computed, never read
            stop = False
            for r0 in range(0, Lc, 8):
                rows = range(r0, min(Lc, r0 + 8))
                cp = {r: float(Kd[r] @ S.astype(np.float64) @ Vd[r]) for r in rows}
                for r in rows:
                    A = a2[r] * A_after
                    pr = eG[r] * cp[r] + (suf0[r] if r > 0 else 0.0)
                    Ac[r] = R(info_score(drift, A, Bv[r], pr, n))
                    A_after = joined(A, Bv[r], pr)
                    if opens_state(R(Ac[r]), tau, C, 1):
                        stop = True
                        break
                if stop:
                    break
        open_lo = 0
        for r in range(Lc):  # the lookups
            if not nonempty:
                Ir = R(0)
            else:
                Ir = R(Ac[r] if carried else tab[r, open_lo])
            o = opens_state(Ir, tau, C, 1 if nonempty else 0)
            I[t0 + r], opens[t0 + r] = Ir, o
            if o:
                open_lo, carried = r, False
            nonempty = True
        # The open state at the chunk's end (only the open state: no other state is kept in pass A).
        decj = np.array([dec(Lc - 1, j) for j in range(Lc)]).astype(R)
        lo = open_lo if not carried else 0
        acc = (K[lo:].T @ (decj[lo:, None] * V[lo:])).astype(R)
        if carried:
            E = R(eG[Lc - 1]) if g is not None else R(1)
            S = (S * E if g is not None else S) + acc
        else:
            S = acc
    return I, opens


def pass_b(I, opens, C, count_in, info_in, start_in, position, R):
    """One item. Consumes I[t], opens[t] and the cache's (count, info, start); produces merged[t] and the
    final (count, info, start) lists. No state is touched."""
    count = [int(x) for x in count_in]
    info = [R(x) for x in info_in]
    start = [int(x) for x in start_in]
    merged = np.full(len(I), -1, np.int64)
    for t in range(len(I)):
        if opens[t]:
            if len(count) == C:
                i = merge_pair(info, count)
                merged[t] = i
                count[i] += count[i + 1]
                info[i] = R(info[i] + info[i + 1])
                del count[i + 1], info[i + 1], start[i + 1]
            count.append(1)
            info.append(I[t])
            start.append(position + t)
        else:
            count[-1] += 1
            info[-1] = R(info[-1] + I[t])
    return merged, count, info, start


def replay(mc, Lc, opens, merged, t0):
    """The chunk's entry list replayed from (opens, merged) per row: the first unit of every entry after each row
    (units: the mc entries at the chunk start, then the chunk rows mc + r) -- v4_replay."""
    units = list(range(mc))
    per_row = []
    for r in range(Lc):
        if opens[t0 + r]:
            i = merged[t0 + r]
            if i >= 0:
                del units[i + 1]
            units.append(mc + r)
        per_row.append(list(units))
    return units, per_row


def pass_c1(k, v, g, L, states_in, m_in, opens, merged, cols, R):
    """One item, one slice of the value columns `cols`: the states only, serial over the chunks. Consumes k,
    v[:, cols], g, the cache's states and pass B's (opens, merged); produces the entries' states at EVERY chunk
    start (chs[n], chronological; chs[nch] = the cache's states) and the entry count at every chunk start."""
    T, Dk = k.shape
    chs = [[states_in[i][:, cols].astype(R).copy() for i in range(m_in)]]
    for t0 in range(0, T, L):
        Lc = min(L, T - t0)
        K, V = k[t0:t0 + Lc].astype(R), v[t0:t0 + Lc][:, cols].astype(R)
        if g is not None:
            G, eG, a2, dec = chunk_decay(g, t0, Lc)
        else:
            eG = np.ones(Lc)
            dec = lambda r, j: 1.0  # noqa: E731
        states = chs[-1]
        mc = len(states)
        units, _ = replay(mc, Lc, opens, merged, t0)
        # States at the chunk's end, per entry: e^{G_last} (sum of its carried states) + its tokens' sum.
        decj = np.array([dec(Lc - 1, j) for j in range(Lc)])
        E = eG[Lc - 1]
        new = []
        m = len(units)
        for i in range(m):
            ulo, uhi = units[i], units[i + 1] if i + 1 < m else mc + Lc
            x = np.zeros((Dk, len(cols)))
            if ulo < mc:
                for u in range(ulo, min(uhi, mc)):
                    x += states[u]
                x *= E
            j0, j1 = max(ulo, mc) - mc, uhi - mc
            if j1 > j0:
                x += K[j0:j1].astype(np.float64).T @ (decj[j0:j1, None] * V[j0:j1].astype(np.float64))
            new.append(x.astype(R))
        chs.append(new)
    return chs


def pass_c2(q, k, v, lam, g, L, n, states, opens, merged, cols, R):
    """One item, one chunk n, one slice of the value columns `cols`, in any order after C1: the chunk's readout
    from the entries' states at its start (C1's chs[n], read only) and the entry lists replayed per row."""
    T = q.shape[0]
    t0 = n * L
    Lc = min(L, T - t0)
    Q, K, V = q[t0:t0 + Lc].astype(R), k[t0:t0 + Lc].astype(R), v[t0:t0 + Lc][:, cols].astype(R)
    lamc = lam[t0:t0 + Lc].astype(np.float64)
    if g is not None:
        G, eG, a2, dec = chunk_decay(g, t0, Lc)
    else:
        eG = np.ones(Lc)
        dec = lambda r, j: 1.0  # noqa: E731
    mc = len(states)
    _, per_row = replay(mc, Lc, opens, merged, t0)
    P = np.zeros((Lc, Lc))
    Win = np.zeros((Lc, max(mc, 1)))
    QK = Q.astype(np.float64) @ K.astype(np.float64).T
    for r in range(Lc):
        units = per_row[r]
        m = len(units)
        for i in range(m):
            li = lamc[r, m - 1 - i]
            ulo, uhi = units[i], units[i + 1] if i + 1 < m else mc + r + 1
            for u in range(ulo, min(uhi, mc)):
                Win[r, u] = li * eG[r]
            for j in range(max(ulo, mc) - mc, uhi - mc):
                P[r, j] = li * dec(r, j) * QK[r, j]
    Y = P @ V.astype(np.float64)
    for u in range(mc):
        Y += Win[:, u:u + 1] * (Q.astype(np.float64) @ states[u][:, cols].astype(np.float64))
    return Y.astype(R)


def three_pass(q, k, v, lam, C, tau, g, drift, cache, L, ns, ns2=1, order_rng=None):
    B, H, T, Dk = q.shape
    Dv = v.shape[3]
    R = np.float64 if q.dtype == np.float64 else np.float32
    y = np.zeros((B, H, T, Dv), R)
    aux_I = np.zeros((B, H, T), R)
    aux_b = np.zeros((B, H, T), bool)
    aux_m = np.zeros((B, H, T), np.int64)
    st = np.zeros((B, H, C, Dk, Dv), R)
    cnt = np.zeros((B, H, C), np.int64)
    inf = np.zeros((B, H, C), R)
    sts = np.zeros((B, H, C), np.int64)
    size = np.zeros((B, H), np.int64)
    position = cache.position if cache is not None else 0
    ncol = -(-Dv // ns)
    if order_rng is None:
        order_rng = np.random.default_rng(0)
    for b in range(B):
        for h in range(H):
            m_in = int(cache.size[b, h]) if cache is not None else 0
            gi = None if g is None else g[b, h]
            open_in = cache.states[b, h, m_in - 1] if m_in > 0 else None
            tables = pass_a1(k[b, h], v[b, h], gi, drift, L, R)
            I, opens = pass_a(k[b, h], v[b, h], gi, tau, C, drift, L, open_in, m_in, R, tables)
            ci = cache.counts[b, h, :m_in] if m_in else []
            fi = cache.info[b, h, :m_in] if m_in else []
            si = cache.starts[b, h, :m_in] if m_in else []
            merged, count, info, start = pass_b(I, opens, C, ci, fi, si, position, R)
            aux_I[b, h], aux_b[b, h], aux_m[b, h] = I, opens, merged
            mf = len(count)
            size[b, h] = mf
            cnt[b, h, :mf], inf[b, h, :mf], sts[b, h, :mf] = count, info, start
            sin = cache.states[b, h] if m_in else None
            chs = None
            for e0 in range(0, Dv, ncol):  # C1: the states by column slices (ns), serial over the chunks
                cols = np.arange(e0, min(Dv, e0 + ncol))
                part = pass_c1(k[b, h], v[b, h], gi, L, sin, m_in, opens, merged, cols, R)
                if chs is None:
                    chs = [[np.full((Dk, Dv), np.nan, R) for _ in x] for x in part]
                for n, x in enumerate(part):
                    for i, s in enumerate(x):
                        chs[n][i][:, cols] = s
            for i, s in enumerate(chs[-1]):
                st[b, h, i] = s
            # C2: every (chunk, column slice of C2's own split ns2) on its own, in a shuffled order
            nch = len(chs) - 1
            ncol2 = -(-Dv // ns2)
            work = [(n, f0) for n in range(nch) for f0 in range(0, Dv, ncol2)]
            for wi in order_rng.permutation(len(work)):
                n, f0 = work[wi]
                c2 = np.arange(f0, min(Dv, f0 + ncol2))
                t0 = n * L
                y[b, h, t0:t0 + min(L, T - t0)][:, c2] = pass_c2(q[b, h], k[b, h], v[b, h], lam[b, h], gi, L, n,
                                                                 chs[n], opens, merged, c2, R)
    return y, (st, cnt, inf, sts, size), (aux_I, aux_b, aux_m)


def make_case(rng, B, H, T, Dk, Dv, C, dtype, mode, zero_keys=False):
    """Piecewise-stationary tokens (segments of 4..9 around a direction) like test_dla_v2.cpp."""
    k = np.empty((B, H, T, Dk))
    v = np.empty((B, H, T, Dv))
    for b in range(B):
        for h in range(H):
            left = 0
            for t in range(T):
                if left == 0:
                    ck, cv = rng.uniform(-1, 1, Dk), rng.uniform(-1, 1, Dv)
                    left = int(rng.integers(4, 10))
                left -= 1
                k[b, h, t] = ck + 0.1 * rng.uniform(-1, 1, Dk)
                v[b, h, t] = cv + 0.1 * rng.uniform(-1, 1, Dv)
    if mode == "random":
        k, v = rng.standard_normal(k.shape), rng.standard_normal(v.shape)
    if zero_keys:
        k[:] = 0
    q = rng.uniform(-1, 1, (B, H, T, Dk))
    lam = rng.uniform(0, 2.0 / C, (B, H, T, C))
    g = -0.2 * rng.uniform(0, 1, (B, H, T))
    return [x.astype(dtype) for x in (q, k, v, lam)] + [g.astype(dtype)]


def run_case(name, rng, T, Dk, Dv, C, tau, L, decay, drift, with_cache, ns, dtype, mode="pw", zero_keys=False):
    B, H = 2, 2
    q, k, v, lam, g = make_case(rng, B, H, T, Dk, Dv, C, dtype, mode, zero_keys)
    gi = g if decay else None
    score = "state_drift" if drift else "token_vs_state"
    cache = None
    if with_cache:  # a cache made by the CPU from a first piece (spans, counts, info all consistent)
        q0, k0, v0, lam0, g0 = make_case(rng, B, H, 13, Dk, Dv, C, dtype, mode, zero_keys)
        with tuning(dla_chunk=L):
            _, cache = attnkit.dynamic_linear_attention(q0, k0, v0, lam0, capacity=C, tau=min(tau, 0.3),
                                                        log_decay=g0 if decay else None, score=score)
    with tuning(dla_chunk=L):
        y_c, cache_c, aux_c = attnkit.dynamic_linear_attention(q, k, v, lam, capacity=C, tau=tau, log_decay=gi,
                                                               score=score, cache=cache, return_aux=True)
    Leff = min(L, T) if T > 0 else 1
    ns2 = ns % 3 + 1  # C2's column split, another than C1's
    y, (st, cnt, inf, sts, size), (aI, ab, am) = three_pass(q, k, v, lam, C, tau, gi, drift, cache, Leff, ns, ns2,
                                                            np.random.default_rng(int(rng.integers(1 << 30))))
    tol = 1e-10 if dtype == np.float64 else 1e-4

    def err(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b) / (1 + np.abs(b)))) if a.size else 0.0
    e = max(err(y, y_c), err(st, cache_c.states), err(inf, cache_c.info), err(aI, aux_c.scores))
    same = (np.array_equal(cnt, cache_c.counts) and np.array_equal(sts, cache_c.starts)
            and np.array_equal(size, cache_c.size) and np.array_equal(ab, aux_c.boundaries)
            and np.array_equal(am, aux_c.merged))
    ok = same and e <= tol
    print(f"{name:44s} T={T:4d} Dk={Dk:2d} Dv={Dv:2d} C={C:2d} L={L:2d} ns={ns}/{ns2} {np.dtype(dtype).name:7s} "
          f"bnd {int(ab.sum()):4d} mrg {int((am >= 0).sum()):4d} err {e:.2g} "
          f"{'' if same else 'DECISIONS DIFFER '}{'ok' if ok else 'FAIL'}")
    return ok


def main():
    rng = np.random.default_rng(24)
    inf = math.inf
    cases = []
    for dt in (np.float64, np.float32):
        cases += [
            ("every token a boundary", 37, 7, 6, 5, -1.0, 8, False, False, False, 2, dt),
            ("every token a boundary, cache, decay", 70, 8, 8, 16, -1.0, 16, True, False, True, 3, dt),
            ("no boundary (tau inf), cache", 37, 7, 6, 5, inf, 8, True, False, True, 1, dt),
            ("C=1, cache", 29, 5, 9, 1, 0.3, 6, True, False, True, 2, dt),
            ("C=2 drift decay cache chunk 5", 41, 7, 6, 2, -1.0, 5, True, True, True, 2, dt),
            ("C > T", 13, 7, 6, 20, -1.0, 64, False, False, False, 2, dt),
            ("chunk 1", 23, 7, 6, 3, -1.0, 1, True, False, True, 2, dt),
            ("odd sizes chunk 7", 45, 9, 13, 3, -1.0, 7, True, False, True, 3, dt),
            ("long T, C=4, default chunk", 300, 8, 8, 4, -1.0, 64, True, False, True, 2, dt),
        ]
    for tau in (0.4, 0.8, 1.1):  # mixed decisions: float64 only (scores near tau may round apart in float32)
        cases += [
            ("mixed tau", 90, 7, 6, 4, tau, 64, False, False, False, 2, np.float64),
            ("mixed tau decay cache chunk 11", 90, 7, 6, 4, tau, 11, True, False, True, 1, np.float64),
            ("mixed tau drift decay cache", 90, 16, 12, 3, tau, 64, True, True, True, 3, np.float64),
            ("mixed tau long T chunk 16", 400, 8, 8, 5, tau, 16, True, False, True, 2, np.float64),
        ]
    ok = True
    for c in cases:
        ok &= run_case(*c[:1], rng, *c[1:])
    # ties: every key zero, every score 0, every merge ratio ties (the oldest pair wins)
    ok &= run_case("zero keys, ties, cache", rng, 60, 8, 8, 6, -1.0, 9, True, False, True, 2, np.float64,
                   zero_keys=True)
    ok &= run_case("zero keys, ties, no cache", rng, 60, 8, 8, 5, -1.0, 64, False, False, False, 1, np.float32,
                   zero_keys=True)
    ok &= run_case("random data (every token opens), C=16", rng, 200, 16, 16, 16, 0.6, 64, False, False, True, 2,
                   np.float64, mode="random")
    print("all ok" if ok else "FAILURES")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
